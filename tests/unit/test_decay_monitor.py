"""agent.decay_monitor: which baseline is used, what is saved, and the `decay:` config section."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from agent.config import load_config
from agent.decay_monitor import BASELINES_FILE, DecayMonitor, DecaySettings
from agent.domain import CanaryItemResult, CanaryResult, Replica, ReplicaState
from agent.errors import ConfigError
from agent.feedback import FeedbackStore
from agent.observe import Observation, ReplicaView

T0 = 1_700_000_000.0


def observation(
    release: str, confidences: Sequence[float], at: float, *, wrong: int = 0
) -> Observation:
    items = tuple(
        CanaryItemResult(
            name=f"item-{i}",
            ok=i >= wrong,
            expected="billing",
            got="billing" if i >= wrong else "account issue",
            confidence=c,
            latency_s=0.01,
            expected_score=c,
        )
        for i, c in enumerate(confidences)
    )
    replica = Replica(id="inference-1", url="http://x", release=release, state=ReplicaState.RUNNING)
    view = ReplicaView(
        replica=replica,
        health=None,
        ready=None,
        canary=CanaryResult(items=items),
        canary_at=at,
        resources=None,
    )
    return Observation(at=at, views=(view,), signals={})


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[DecayMonitor]:
    feedback = FeedbackStore(tmp_path, window=500)
    yield DecayMonitor(
        settings=DecaySettings(baseline_runs=3), state_dir=tmp_path, feedback=feedback
    )
    feedback.close()


def test_a_constant_golden_set_says_no_variance_and_only_mcnemar_counts(
    monitor: DecayMonitor,
) -> None:
    for i in range(3):
        monitor.update(observation("v1", [1.0] * 8, T0 + i), release="v1", candidate=False,
                       good=True, last_good="v1", now=T0 + i)  # fmt: skip
    report = monitor.update(
        observation("v1", [1.0] * 8, T0 + 5), release="v1", candidate=False, good=True,
        last_good="v1", now=T0 + 5,
    )  # fmt: skip
    assert report.verdict is not None
    assert "Welch: no variance" in report.verdict.reason
    assert "Bonferroni x1" in report.verdict.reason
    assert report.signals == {
        "canary_accuracy_drop": 0.0,
        "decay_p_value": 1.0,
        "decay_detected": 0.0,
        "candidate_decay_detected": 0.0,
    }


def test_a_good_release_without_a_baseline_takes_one_after_baseline_runs(
    monitor: DecayMonitor, tmp_path: Path
) -> None:
    for i in range(2):
        report = monitor.update(observation("v1", [0.9] * 8, T0 + i), release="v1",
                                candidate=False, good=True, last_good="v1", now=T0 + i)  # fmt: skip
        assert report.signals == {}
    monitor.update(observation("v1", [0.9] * 8, T0 + 2), release="v1", candidate=False,
                   good=True, last_good="v1", now=T0 + 2)  # fmt: skip
    baseline = monitor.baseline("v1")
    assert baseline is not None and baseline.runs == 3
    assert (tmp_path / BASELINES_FILE).exists()


def test_a_candidate_is_compared_with_the_last_good_release(monitor: DecayMonitor) -> None:
    good = [0.99, 0.98, 0.97, 0.99, 0.96, 0.98, 0.99, 0.97]
    monitor.update(observation("v1", good, T0), release="v1", candidate=False, good=True,
                   last_good="v1", now=T0)  # fmt: skip
    monitor.capture("v1", T0)
    report = monitor.update(observation("v2", good, T0 + 1, wrong=6), release="v2",
                            candidate=True, good=False, last_good="v1", now=T0 + 1)  # fmt: skip
    assert report.reference == "v1"
    assert report.signals["canary_accuracy_drop"] == pytest.approx(0.75)
    assert report.signals["candidate_decay_detected"] == 1.0  # 6 flips: 0.5**6 x 2 < 0.05
    assert report.changed
    again = monitor.update(
        observation("v2", good, T0 + 1, wrong=6),
        release="v2",
        candidate=True,
        good=False,
        last_good="v1",
        now=T0 + 2,
    )
    assert again.signals == report.signals and not again.changed  # the same run: said once


def test_a_bad_release_has_nothing_to_compare_with(monitor: DecayMonitor) -> None:
    report = monitor.update(observation("v3", [0.5] * 8, T0), release="v3", candidate=False,
                            good=False, last_good="v1", now=T0)  # fmt: skip
    assert report.verdict is None and report.signals == {}


def test_an_unreadable_baseline_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / BASELINES_FILE).write_text("{not json")
    feedback = FeedbackStore(tmp_path, window=10)
    monitor = DecayMonitor(settings=DecaySettings(), state_dir=tmp_path, feedback=feedback)
    assert monitor.baseline("v1") is None
    feedback.close()


def test_decay_config_refuses_a_minimum_the_window_cannot_hold(tmp_path: Path) -> None:
    config = tmp_path / "warden.yaml"
    config.write_text("decay:\n  feedback_window: 100\n  feedback_min_samples: 250\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert "feedback_min_samples (250) is more than feedback_window (100)" in str(caught.value)


def test_decay_config_defaults(tmp_path: Path) -> None:
    decay = load_config(None, base_dir=tmp_path).decay
    assert (decay.alpha, decay.feedback_window, decay.feedback_min_samples) == (0.05, 500, 250)
