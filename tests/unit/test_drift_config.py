"""The ``drift:`` section of warden.yaml and how build_agent wires the monitor."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from agent.app import drift_monitor
from agent.config import load_config
from agent.drift.monitor import DriftMonitor
from agent.errors import ConfigError


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "warden.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    d = load_config(None, base_dir=tmp_path).drift
    assert (d.engine, d.test, d.correction, d.alpha, d.min_statistic) == (
        "scipy", "ks", "bonferroni", 0.01, 0.1,
    )  # fmt: skip
    assert (d.window, d.min_window, d.consecutive, d.reference_size, d.min_reference) == (
        500, 200, 2, 1000, 1000,
    )  # fmt: skip
    assert d.max_age_s is None and d.interval_s == 5.0


def test_durations_and_choices_are_parsed(tmp_path: Path) -> None:
    path = config(tmp_path, "drift: {max_age: 10m, interval: 2s, correction: fdr, test: cvm}\n")
    d = load_config(path).drift
    assert (d.max_age_s, d.interval_s, d.correction, d.test) == (600.0, 2.0, "fdr", "cvm")


def test_an_unknown_correction_is_named(tmp_path: Path) -> None:
    path = config(tmp_path, "drift: {correction: holm, window: 100, min_window: 200}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = "\n".join(caught.value.problems)
    assert 'unknown correction "holm"' in text


def test_min_window_above_window_is_refused(tmp_path: Path) -> None:
    path = config(tmp_path, "drift: {window: 100, min_window: 200}\n")
    with pytest.raises(ConfigError, match=r"min_window \(200\) is more than window \(100\)"):
        load_config(path)


def test_alibi_with_cvm_is_refused(tmp_path: Path) -> None:
    path = config(tmp_path, "drift: {engine: alibi, test: cvm}\n")
    with pytest.raises(ConfigError, match="the alibi engine runs the KS test only"):
        load_config(path)


def test_alibi_engine_without_the_extra_is_a_config_error_with_the_hint(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, "drift: {engine: alibi}\n"))
    with pytest.raises(ConfigError, match=r"pip install 'warden\[drift-alibi\]'"):
        drift_monitor(cfg, httpx.Client())


def test_the_default_agent_has_a_scipy_monitor_and_disabled_means_none(tmp_path: Path) -> None:
    monitor = drift_monitor(load_config(None, base_dir=tmp_path), httpx.Client())
    assert isinstance(monitor, DriftMonitor)
    off = load_config(config(tmp_path, "drift: {enabled: false}\n"))
    assert drift_monitor(off, httpx.Client()) is None
