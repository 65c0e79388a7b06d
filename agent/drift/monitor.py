"""The drift monitor: live observations -> windows -> tests -> service signals.

Runs on its own interval (``Runtime`` schedules ``poll``), never inside the tick: fetching from a
replica that just hung must not delay the health probes that detect the hang. The tick only tells
the monitor what serves now (``tick``) and reads the latest signals; promotion asks for a reference
(``promoted``). Both are cheap and thread-safe.

- **Observations.** ``GET /v1/observations?after=CURSOR`` on every ready replica of the current
  release, one cursor per replica process (a restarted replica starts a new ring). A feature row is
  the 32 projected features plus the top-1 confidence when the task has one. Requests that repeat
  an earlier multi-item request exactly (the agent's own canary runs) are left out.
- **Reference.** At promotion the newest ``reference_size`` rows of the release (its bake traffic)
  become its reference, saved in ``state_dir/drift``; with fewer than ``min_reference`` rows the
  capture waits for more traffic. ``reference_file`` replaces captured references for every
  release. Until a release has its own reference, its windows are compared with the previous good
  release's.
- **Windows.** Every ``window`` rows are tested; with ``max_age`` a window also closes when its
  oldest row is that old, and is skipped (saying so) when it has fewer than ``min_window`` rows.
- **Signals.** ``drift_detected`` = the last ``consecutive`` windows all drifted (from the same
  reference); ``drift_p_value``/``drift_statistic``/``drift_features_fraction`` describe the last
  window; ``drift_since_deploy`` = drift detected against the reference of the release this one
  replaced, starting within ``deploy_windows`` windows of the deploy, while that release was not
  drifting in its own last window - the change came with the deploy, not with the traffic.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from agent.domain import Replica
from agent.drift import Engine
from agent.drift.detector import DriftInputError, DriftResult, DriftSettings, detect
from agent.drift.files import observation_row
from agent.drift.reference import Reference, ReferenceStore

log = logging.getLogger(__name__)

VERDICTS_FILE = "verdicts.json"
MAX_PAGES_PER_POLL = 20
FETCH_TIMEOUT_S = 5.0  # a page of 1000 observations is ~300 kB of JSON; this runs off the tick


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorSettings:
    """Windowing and persistence of drift tests (parsed from the ``drift:`` config section)."""

    window: int = 500
    min_window: int = 200
    max_age_s: float | None = None
    consecutive: int = 2
    reference_size: int = 1000
    min_reference: int = 1000
    deploy_windows: int = 4
    fetch_limit: int = 1000
    detector: DriftSettings = field(default_factory=DriftSettings)


@dataclass(slots=True)
class _Watch:
    """What the monitor collects for the release that serves now."""

    release: str
    recent: deque[list[float]]  # newest rows of this release (reference capture)
    window: list[list[float]] = field(default_factory=list)
    window_first_at: float | None = None
    width: int | None = None  # features per row, from the first observation
    windows: int = 0  # windows tested since this release started serving
    streak: int = 0  # consecutive drifting windows against ``against``
    streak_start: int = 0  # window number where the streak began
    against: str | None = None  # release whose reference the streak was measured against


@dataclass(frozen=True, slots=True)
class _Context:
    ready: tuple[Replica, ...] = ()
    release: str | None = None
    previous_good: str | None = None


class DriftMonitor:
    """Pulls observations, tests windows, keeps the drift signals; see the module docstring."""

    def __init__(
        self,
        *,
        client: httpx.Client,
        store: ReferenceStore,
        settings: MonitorSettings,
        engine: Engine = detect,
        reference_file: Reference | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self.settings = settings
        self._engine = engine
        self._file_reference = reference_file
        self._lock = threading.Lock()  # context, signals, captures: shared with the tick
        self._poll_lock = threading.Lock()  # one poll at a time
        self._context = _Context()
        self._signals: dict[str, float] = {}
        self._captures: set[str] = set()
        self._watch: _Watch | None = None
        self._cursors: dict[str, tuple[tuple[int | None, float | None], int]] = {}
        self._references: dict[str, Reference | None] = {}
        self._verdicts = self._load_verdicts()
        self._batches: deque[npt.NDArray[np.float64]] = deque(maxlen=32)  # recent requests
        self.repeated = 0  # observations dropped as repeated requests (canary runs)
        self.status = "waiting for the first poll"
        self.last_result: DriftResult | None = None

    # --- the tick's side (cheap, thread-safe) --------------------------------------------------

    def tick(
        self, *, ready: Sequence[Replica], release: str, previous_good: str | None, now: float
    ) -> Mapping[str, float]:
        """Record what serves now; return the latest signals (empty until a window was tested)."""
        with self._lock:
            self._context = _Context(tuple(ready), release, previous_good)
            return dict(self._signals)

    def promoted(self, release: str, now: float) -> None:
        """Capture ``release``'s reference at the next poll (waits for enough traffic)."""
        with self._lock:
            if self._file_reference is None:
                self._captures.add(release)

    def signals(self) -> dict[str, float]:
        with self._lock:
            return dict(self._signals)

    # --- the poll (its own job) ----------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Fetch new observations, capture a pending reference, test every full window."""
        with self._poll_lock:
            with self._lock:
                context, captures = self._context, set(self._captures)
            if context.release is None:
                return
            watch = self._watch
            if watch is None or watch.release != context.release:
                watch = self._switch(context.release)
            self._collect(watch, context, now)
            self._close_windows(watch, context, now)  # traffic before the capture: old reference
            for release in captures:
                self._capture(watch, release, now)

    def _switch(self, release: str) -> _Watch:
        """A new release serves: start its windows; no evidence of drift yet (rules resolve)."""
        saved = self._verdicts.get(release, {})
        watch = _Watch(
            release=release,
            recent=deque(maxlen=self.settings.reference_size),
            windows=int(saved.get("windows", 0)),
        )
        self._watch = watch
        self._cursors.clear()
        with self._lock:
            self._signals = {"drift_detected": 0.0, "drift_since_deploy": 0.0}
        self._say(f"watching {release}")
        return watch

    def _collect(self, watch: _Watch, context: _Context, now: float) -> None:
        for replica in context.ready:
            if replica.release not in ("", watch.release):
                continue  # a replica still on the old release during a rolling change
            for at, row in self._without_repeated_batches(self._fetch(replica)):
                if watch.width is None:
                    watch.width = len(row)
                if len(row) != watch.width:
                    continue  # a task without confidence mixed with one with it: not comparable
                watch.recent.append(row)
                if not watch.window:
                    watch.window_first_at = at
                watch.window.append(row)

    def _without_repeated_batches(
        self, rows: list[tuple[float, list[float]]]
    ) -> list[tuple[float, list[float]]]:
        """Drop requests that repeat an earlier multi-item request item for item: canary runs.

        The agent's canaries are one ``/predict`` of the whole golden set every few seconds (every
        2 s while a release bakes); they are recorded like live traffic, with one timestamp per
        request. Left in, they would be most of a quiet service's observations - its reference
        would be 8 points repeated, and every live window would "drift" from it. Live traffic
        almost never repeats a whole multi-item request; the first run of a golden set is kept.
        """
        kept: list[tuple[float, list[float]]] = []
        start = 0
        while start < len(rows):
            end = start + 1
            while end < len(rows) and rows[end][0] == rows[start][0]:
                end += 1
            group = rows[start:end]
            start = end
            if len(group) < 2:
                kept += group
                continue
            matrix = np.array([row for _, row in group])
            if any(
                seen.shape == matrix.shape and np.allclose(seen, matrix, rtol=0.0, atol=1e-4)
                for seen in self._batches
            ):
                self.repeated += len(group)
                continue
            self._batches.append(matrix)
            kept += group
        return kept

    def _fetch(self, replica: Replica) -> list[tuple[float, list[float]]]:
        instance = (replica.pid, replica.started_at)
        known = self._cursors.get(replica.id)
        after = known[1] if known is not None and known[0] == instance else -1
        rows: list[tuple[float, list[float]]] = []
        for _ in range(MAX_PAGES_PER_POLL):
            try:
                response = self._client.get(
                    f"{replica.url}/v1/observations",
                    params={"after": after, "limit": self.settings.fetch_limit},
                    timeout=FETCH_TIMEOUT_S,
                )
                response.raise_for_status()
                page: dict[str, Any] = response.json()
                items = page["observations"]
                cursor = int(page["next"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                self._say(f"observations of {replica.id} unavailable: {exc}", level=logging.DEBUG)
                break
            oldest = int(page.get("oldest", 0))
            if after >= 0 and oldest > after + 1:
                self._say(
                    f"{oldest - after - 1} observations of {replica.id} were evicted from its "
                    "ring before they were read (poll more often or enlarge the ring)"
                )
            for item in items:
                row = observation_row(item) if isinstance(item, dict) else None
                if row is not None:
                    rows.append((float(item.get("at", 0.0)), row))
            after = cursor
            self._cursors[replica.id] = (instance, cursor)
            if len(items) < self.settings.fetch_limit:
                break
        return rows

    # --- references ------------------------------------------------------------------------------

    def _reference(self, release: str | None) -> Reference | None:
        if release is None:
            return None
        if release not in self._references:
            self._references[release] = self._store.load(release)
        return self._references[release]

    def _reference_for(self, watch: _Watch, context: _Context) -> Reference | None:
        """The release's own reference, else the file's, else the previous good release's."""
        if self._file_reference is not None:
            return self._file_reference
        return self._reference(watch.release) or self._reference(context.previous_good)

    def _capture(self, watch: _Watch, release: str, now: float) -> None:
        if release != watch.release:
            self._forget_capture(release)  # replaced before it got enough traffic
            return
        if self.signals().get("drift_since_deploy") == 1.0:
            self._say(
                f"not capturing a reference for {release}: its traffic drifted from the "
                "reference of the release it replaced"
            )
            return
        if len(watch.recent) < self.settings.min_reference:
            self._say(
                f"capturing the reference of {release}: {len(watch.recent)}/"
                f"{self.settings.min_reference} observations so far"
            )
            return
        reference = Reference(
            release=release,
            features=np.array(watch.recent, dtype=np.float64),
            captured_at=now,
            source="live traffic",
        )
        self._store.save(reference)
        self._references[release] = reference
        watch.streak, watch.against = 0, None  # the next windows are judged by the new reference
        self._forget_capture(release)
        self._say(f"captured the reference of {release} ({reference.n} observations)")

    def _forget_capture(self, release: str) -> None:
        with self._lock:
            self._captures.discard(release)

    # --- windows ---------------------------------------------------------------------------------

    def _close_windows(self, watch: _Watch, context: _Context, now: float) -> None:
        size = self.settings.window
        while len(watch.window) >= size:
            rows, watch.window = watch.window[:size], watch.window[size:]
            watch.window_first_at = now if watch.window else None
            self._test(watch, context, rows, now)
        max_age = self.settings.max_age_s
        first = watch.window_first_at
        if max_age is None or first is None or now - first < max_age:
            return
        rows, watch.window, watch.window_first_at = watch.window, [], None
        if len(rows) < self.settings.min_window:
            self._say(
                f"skipped a window of {len(rows)} observations older than {max_age:g} s: "
                f"below min_window {self.settings.min_window}"
            )
            return
        self._test(watch, context, rows, now)

    def _test(self, watch: _Watch, context: _Context, rows: list[list[float]], now: float) -> None:
        reference = self._reference_for(watch, context)
        if reference is None:
            self._say(
                f"no reference to test {watch.release} against yet (none captured, no previous "
                "good release with one)"
            )
            return
        try:
            result = self._engine(reference.features, rows, self.settings.detector)
        except DriftInputError as exc:
            self._say(f"window of {watch.release} not tested: {exc}", level=logging.WARNING)
            return
        watch.windows += 1
        if reference.release != watch.against:
            watch.streak, watch.against = 0, reference.release
        if result.drift:
            if watch.streak == 0:
                watch.streak_start = watch.windows
            watch.streak += 1
        else:
            watch.streak = 0
        detected = watch.streak >= self.settings.consecutive
        since_deploy = detected and self._began_with_deploy(watch, reference, context)
        self.last_result = result
        with self._lock:
            self._signals = {
                "drift_detected": float(detected),
                "drift_since_deploy": float(since_deploy),
                "drift_p_value": result.p_value,
                "drift_statistic": result.statistic,
                "drift_features_fraction": result.features_fraction,
            }
        self._remember(watch, detected, reference.release, now)
        self._say(
            f"window {watch.windows} of {watch.release} vs reference of {reference.release}: "
            f"{'drift' if result.drift else 'no drift'} (corrected p {result.p_value:.3g}, "
            f"KS {result.statistic:.3f}, {result.features_fraction:.0%} of features)",
            level=logging.DEBUG,
        )

    def _began_with_deploy(self, watch: _Watch, reference: Reference, context: _Context) -> bool:
        """Drift against the replaced release's reference, starting right after the deploy,
        while that release itself was quiet against the same reference."""
        if reference.release == watch.release:  # judged by its own reference: not about a deploy
            return False
        if watch.streak_start > self.settings.deploy_windows:
            return False
        before = self._verdicts.get(context.previous_good or "")
        return (
            before is not None
            and before.get("against") == reference.release
            and before.get("drifting") is False
        )

    def _remember(self, watch: _Watch, drifting: bool, against: str, now: float) -> None:
        """Persist the release's verdict (a later deploy asks whether it was quiet)."""
        self._verdicts[watch.release] = {
            "drifting": drifting,
            "against": against,
            "windows": watch.windows,
            "at": now,
        }
        path = self._store.directory / VERDICTS_FILE
        try:
            self._store.directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._verdicts, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.error("drift verdicts not saved to %s: %s", path, exc)

    def _load_verdicts(self) -> dict[str, dict[str, Any]]:
        path: Path = self._store.directory / VERDICTS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("drift verdicts in %s unreadable (%s); starting without them", path, exc)
            return {}
        return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}

    def _say(self, status: str, *, level: int = logging.INFO) -> None:
        """Keep the status; log it once per change."""
        if status != self.status:
            log.log(level, "drift: %s", status)
            self.status = status
