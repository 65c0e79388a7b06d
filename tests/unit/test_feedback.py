"""agent.feedback: the labelled-feedback store and its windows; POST/GET /api/feedback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.api import create_api
from agent.app import build_agent
from agent.clock import FakeClock
from agent.config import load_config
from agent.feedback import FeedbackItem, FeedbackStore, Window
from agent.loop import Agent

T0 = 1_700_000_000.0
TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def answers(release: str, right: int, wrong: int) -> list[FeedbackItem]:
    ok = [FeedbackItem(predicted="billing", label="billing", release=release)] * right
    bad = [FeedbackItem(predicted="billing", label="account issue", release=release)] * wrong
    return ok + bad


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    s = FeedbackStore(tmp_path, window=10)
    yield s
    s.close()


def test_the_baseline_is_a_releases_first_window_and_live_what_came_after(
    store: FeedbackStore,
) -> None:
    store.add(answers("v1", 9, 1), T0)
    store.add(answers("v1", 6, 4), T0 + 1)
    assert store.baseline("v1") == Window(correct=9, total=10)
    assert store.live("v1", after_baseline=True) == Window(correct=6, total=10)
    assert store.live("v1", after_baseline=False) == Window(correct=6, total=10)


def test_a_candidates_live_window_starts_with_its_first_item(store: FeedbackStore) -> None:
    store.add(answers("v2", 3, 1), T0)
    assert store.live("v2", after_baseline=False) == Window(correct=3, total=4)
    assert store.live("v2", after_baseline=True) == Window()


def test_only_the_baseline_and_the_latest_window_are_kept(store: FeedbackStore) -> None:
    store.add(answers("v1", 10, 0), T0)  # baseline: all right
    store.add(answers("v1", 0, 25), T0 + 1)  # 25 wrong: only the last 10 are live
    store.add(answers("v1", 5, 0), T0 + 2)
    assert store.baseline("v1") == Window(correct=10, total=10)
    assert store.live("v1", after_baseline=True) == Window(correct=5, total=10)
    rows = store._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    assert rows == 20


def test_a_repeated_id_is_counted_once(store: FeedbackStore) -> None:
    item = FeedbackItem(predicted="billing", label="billing", release="v1", key="req-1")
    first = store.add([item], T0)
    again = store.add([item, item], T0 + 1)
    assert (first.accepted, again.accepted, again.duplicates) == (1, 0, 2)
    assert store.baseline("v1").total == 1


def test_feedback_survives_a_restart(tmp_path: Path) -> None:
    first = FeedbackStore(tmp_path, window=10)
    first.add(answers("v1", 7, 3), T0)
    first.close()
    second = FeedbackStore(tmp_path, window=10)
    assert second.baseline("v1") == Window(correct=7, total=10)
    second.close()


# --- the API ----------------------------------------------------------------------------------


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    config = tmp_path / "warden.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "decay: {feedback_window: 20, feedback_min_samples: 5}\n"
        "release: {tag: v1}\n"
    )

    class NoBackend:  # the feedback routes never touch replicas
        kind = "none"

    built = build_agent(load_config(config), clock=FakeClock(T0), backend=NoBackend())  # type: ignore[arg-type]
    yield built
    assert built.decay is not None
    built.decay.feedback.close()
    built.observer.close()
    built.store.close()


def test_posting_feedback_needs_the_bearer_token(agent: Agent) -> None:
    client = TestClient(create_api(agent, token=TOKEN))
    body = {"items": [{"predicted": "billing", "label": "billing"}]}
    assert client.post("/api/feedback", json=body).status_code == 401
    assert client.post("/api/feedback", json=body, headers=AUTH).status_code == 200


def test_feedback_goes_to_the_current_release_unless_the_caller_names_one(agent: Agent) -> None:
    client = TestClient(create_api(agent, token=TOKEN))
    items = [{"predicted": "billing", "label": "billing", "id": f"r{i}"} for i in range(4)]
    items.append({"predicted": "billing", "label": "account issue", "release": "v0"})
    reply = client.post("/api/feedback", json={"items": items}, headers=AUTH).json()
    assert reply["accepted"] == 5
    assert reply["release"] == "v1"
    assert reply["feedback"]["live"] == {"correct": 4, "total": 4, "accuracy": 1.0}
    assert reply["feedback"]["min_samples"] == 5
    assert agent.decay is not None
    assert agent.decay.feedback.baseline("v0") == Window(correct=0, total=1)


def test_get_feedback_reports_the_windows_and_the_minimum_sample_size(agent: Agent) -> None:
    client = TestClient(create_api(agent, token=TOKEN))
    doc = client.get("/api/feedback").json()
    assert doc["feedback"] == {
        "live": {"correct": 0, "total": 0, "accuracy": None},
        "baseline": {"correct": 0, "total": 0, "accuracy": None},
        "window": 20,
        "min_samples": 5,
    }
    assert doc["reason"] == "no baseline to compare with"


def test_a_feedback_item_with_an_unknown_field_is_refused(agent: Agent) -> None:
    client = TestClient(create_api(agent, token=TOKEN))
    body = {"items": [{"predicted": "billing", "label": "billing", "input": "refund me"}]}
    reply = client.post("/api/feedback", json=body, headers=AUTH)
    assert reply.status_code == 422
