"""Accuracy decay, tick by tick: baselines of good releases and the decay signals.

When a release is promoted good, ``capture`` pools its last canary runs into a *baseline* (per
golden-set item: right or wrong, mean probability of the expected label) and saves it in
``state_dir/decay-baselines.json``, so it survives agent restarts. Each tick, ``update`` compares
the latest canary run of every replica serving the current release, and the labelled feedback,
with a baseline (``agent.decay`` holds the statistics):

- a *candidate* release is compared with the baseline of the last good release: significant decay
  sets ``candidate_decay_detected`` (the default rule reverts it) and ``decay_detected``;
- a good release is compared with its own baseline (decay in place: the world changed, or a replica
  went wrong): ``decay_detected`` only (the default rule alerts; rolling back would not help).
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.decay import (
    DecayTest,
    ItemSummary,
    Verdict,
    accuracy_of,
    canary_tests,
    combine,
    fisher_decay,
    summarise_runs,
)
from agent.domain import CanaryResult
from agent.feedback import FeedbackStore, Window
from agent.observe import Observation

log = logging.getLogger(__name__)

BASELINES_FILE = "decay-baselines.json"
KEEP_BASELINES = 20  # the newest releases' baselines; older ones are never compared with
Run = Mapping[str, tuple[bool, float | None]]  # item name -> (right label, expected-label prob)


@dataclass(frozen=True, slots=True, kw_only=True)
class DecaySettings:
    """The knobs of ``decay:`` in ``warden.yaml`` (``docs/decay.md`` explains each default)."""

    alpha: float = 0.05
    baseline_runs: int = 5
    min_confidence_drop: float = 0.05
    min_accuracy_drop: float = 0.05
    feedback_window: int = 500
    feedback_min_samples: int = 250


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryBaseline:
    """A good release's golden-set answers, pooled over ``runs`` canary runs."""

    release: str
    captured_at: float
    runs: int
    items: Mapping[str, ItemSummary]

    @property
    def accuracy(self) -> float | None:
        return accuracy_of(self.items)


@dataclass(frozen=True, slots=True, kw_only=True)
class DecayReport:
    """This tick's decay signals and the verdict behind them."""

    signals: dict[str, float]
    verdict: Verdict | None  # None: nothing to compare with (no baseline, no feedback)
    reference: str | None  # the release whose baseline was used
    changed: bool  # decay_detected differs from the previous tick


@dataclass(slots=True)
class _Seen:
    runs: dict[str, deque[Run]] = field(default_factory=dict)  # release -> recent runs
    last_run_at: dict[str, float] = field(default_factory=dict)  # slot -> canary_at used


class DecayMonitor:
    """Keeps canary history and baselines; turns them and the feedback into decay signals."""

    def __init__(
        self, *, settings: DecaySettings, state_dir: Path, feedback: FeedbackStore
    ) -> None:
        self.settings = settings
        self.feedback = feedback
        self._path = Path(state_dir) / BASELINES_FILE
        self._baselines = _load(self._path)
        self._seen = _Seen()
        self._detected = False
        self._key: tuple[object, ...] = ()
        self.last: DecayReport | None = None

    def baseline(self, release: str) -> CanaryBaseline | None:
        return self._baselines.get(release)

    def capture(self, release: str, now: float) -> CanaryBaseline | None:
        """Pool the release's recent canary runs into its baseline and save it (at promotion)."""
        runs = list(self._seen.runs.get(release, ()))
        if not runs:
            log.warning("no canary runs of %s to capture a decay baseline from", release)
            return None
        baseline = CanaryBaseline(
            release=release, captured_at=now, runs=len(runs), items=summarise_runs(runs)
        )
        self._baselines[release] = baseline
        newest = sorted(self._baselines.values(), key=lambda b: -b.captured_at)[:KEEP_BASELINES]
        self._baselines = {b.release: b for b in newest}
        _save(self._path, self._baselines)
        log.info(
            "decay baseline of %s: %d canary runs, accuracy %.0f%%",
            release,
            len(runs),
            100 * (baseline.accuracy or 0.0),
        )
        return baseline

    def update(
        self,
        obs: Observation,
        *,
        release: str,
        candidate: bool,
        good: bool,
        last_good: str | None,
        now: float,
    ) -> DecayReport:
        """Decay signals for ``release`` as served now (service scope).

        The tests run again only when their inputs changed (a new canary run, new feedback, another
        baseline): most ticks see the same runs, and an idle tick should cost next to nothing.
        """
        current = self._collect(obs, release)
        runs = len(self._seen.runs.get(release, ()))
        if good and release not in self._baselines and runs >= self.settings.baseline_runs:
            # a release promoted before this agent kept baselines: take one once it has the runs
            self.capture(release, now)
        reference = last_good if candidate else release if good else None
        baseline = self._baselines.get(reference) if reference else None
        key = (
            release,
            reference,
            candidate,
            tuple(marker for marker, _ in current),
            self.feedback.version,
            baseline.captured_at if baseline is not None else None,
        )
        if key == self._key and self.last is not None:
            return replace(self.last, changed=False)
        self._key = key
        signals, verdict = self._judge(release, reference, baseline, [r for _, r in current])
        if verdict is not None and verdict.p_value is not None:
            signals["candidate_decay_detected"] = float(verdict.detected and candidate)
        changed = False
        if "decay_detected" in signals:  # no test ran: the last verdict stands
            detected = signals["decay_detected"] == 1.0
            changed, self._detected = detected != self._detected, detected
        if changed and verdict is not None:
            level = logging.WARNING if self._detected else logging.INFO
            log.log(level, "%s vs baseline of %s: %s", release, reference, verdict.reason)
        self.last = DecayReport(
            signals=signals, verdict=verdict, reference=reference, changed=changed
        )
        return self.last

    def _judge(
        self,
        release: str,
        reference: str | None,
        baseline: CanaryBaseline | None,
        current: list[Run],
    ) -> tuple[dict[str, float], Verdict | None]:
        """Run the tests that can run; the signals they give and the combined verdict."""
        signals: dict[str, float] = {}
        tests: list[DecayTest] = []
        if baseline is not None and current:
            now_items = summarise_runs(current)
            tests.extend(
                canary_tests(
                    baseline.items,
                    now_items,
                    min_confidence_drop=self.settings.min_confidence_drop,
                )
            )
            base_acc, now_acc = baseline.accuracy, accuracy_of(now_items)
            if base_acc is not None and now_acc is not None:
                signals["canary_accuracy_drop"] = max(0.0, base_acc - now_acc)
        live, base_window = self._feedback(release, reference)
        if live.total >= self.settings.feedback_min_samples and live.accuracy is not None:
            signals["accuracy"] = live.accuracy
            if base_window.total >= self.settings.feedback_min_samples:
                signals["accuracy_drop"] = max(0.0, (base_window.accuracy or 0.0) - live.accuracy)
        if reference is not None:
            tests.append(self._fisher(base_window, live))
        verdict = combine(tests, alpha=self.settings.alpha) if tests else None
        if verdict is not None and verdict.p_value is not None:
            signals["decay_p_value"] = verdict.p_value
            signals["decay_detected"] = float(verdict.detected)
        return signals, verdict

    def describe(self, release: str) -> dict[str, Any]:
        """The last verdict, the windows and the minimum sample size, for ``GET /api/feedback``."""
        report = self.last
        reference = report.reference if report is not None else None
        live, base_window = self._feedback(release, reference)
        verdict = report.verdict if report is not None else None
        return {
            "release": release,
            "baseline_release": reference,
            "decay_detected": report.signals.get("decay_detected") if report else None,
            "decay_p_value": report.signals.get("decay_p_value") if report else None,
            "reason": verdict.reason if verdict is not None else "no baseline to compare with",
            "tests": [_test_json(t) for t in verdict.tests] if verdict is not None else [],
            "feedback": {
                "live": _window_json(live),
                "baseline": _window_json(base_window),
                "window": self.settings.feedback_window,
                "min_samples": self.settings.feedback_min_samples,
            },
        }

    def _collect(self, obs: Observation, release: str) -> list[tuple[tuple[str, float], Run]]:
        """Remember new canary runs of ``release``; the latest run of each replica serving it,
        each with its (slot, time) marker."""
        latest = []
        for view in obs.views:
            result, at = view.canary, view.canary_at
            if view.replica.release != release or result is None or not result.items:
                continue
            if result.unanswered or at is None:
                continue
            run = _run_of(result)
            latest.append(((view.replica.id, at), run))
            if self._seen.last_run_at.get(view.replica.id) != at:
                self._seen.last_run_at[view.replica.id] = at
                history = self._seen.runs.setdefault(
                    release, deque(maxlen=self.settings.baseline_runs)
                )
                history.append(run)
        return latest

    def _feedback(self, release: str, reference: str | None) -> tuple[Window, Window]:
        live = self.feedback.live(release, after_baseline=reference == release)
        base = self.feedback.baseline(reference) if reference else Window()
        return live, base

    def _fisher(self, base: Window, live: Window) -> DecayTest:
        return fisher_decay(
            baseline_correct=base.correct,
            baseline_total=base.total,
            current_correct=live.correct,
            current_total=live.total,
            min_samples=self.settings.feedback_min_samples,
            min_effect=self.settings.min_accuracy_drop,
        )


def _run_of(result: CanaryResult) -> Run:
    return {item.name: (item.got == item.expected, item.expected_score) for item in result.items}


def _test_json(result: DecayTest) -> dict[str, Any]:
    return {"test": result.test, "p_value": result.p_value, "detail": result.detail}


def _window_json(window: Window) -> dict[str, Any]:
    return {"correct": window.correct, "total": window.total, "accuracy": window.accuracy}


def _load(path: Path) -> dict[str, CanaryBaseline]:
    """Saved baselines; a missing file is none, an unreadable one is logged and ignored."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {
            tag: CanaryBaseline(
                release=tag,
                captured_at=float(entry["captured_at"]),
                runs=int(entry["runs"]),
                items={
                    name: ItemSummary(correct=bool(item["correct"]), confidence=item["confidence"])
                    for name, item in entry["items"].items()
                },
            )
            for tag, entry in data["baselines"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.error("%s is unreadable (%s); decay baselines start afresh", path, exc)
        return {}


def _save(path: Path, baselines: Mapping[str, CanaryBaseline]) -> None:
    """Write atomically (temp file, fsync, rename): a kill -9 leaves the old or the new file."""
    data = {
        "version": 1,
        "baselines": {
            tag: {
                "captured_at": b.captured_at,
                "runs": b.runs,
                "items": {
                    name: {"correct": s.correct, "confidence": s.confidence}
                    for name, s in b.items.items()
                },
            }
            for tag, b in baselines.items()
        },
    }
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__: Sequence[str] = ("CanaryBaseline", "DecayMonitor", "DecayReport", "DecaySettings")
