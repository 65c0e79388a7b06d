"""Accuracy decay end to end: a release with degraded weights is reverted by the decay test.

The degraded release is the packaged all-MiniLM-L6-v2 with Gaussian noise (0.5 x each weight
matrix's standard deviation, seed 7) on every weight matrix. It loads, is healthy and ready, and
still gives every golden-set item the right label above ``min_confidence`` 0.3 — so every
threshold canary rule passes — but its expected-label probabilities fall from about 0.997 to
about 0.47. Only the Welch test on those probabilities against v1's baseline can see it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from inference.modeldir import default_model_dir
from tests.integration.agent_harness import running_agent
from tests.integration.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

NOISE = 0.5
NOISE_SEED = 7


def degraded_model(path: Path) -> Path:
    """A copy of the default model with seeded noise on every weight matrix."""
    shutil.copytree(default_model_dir(), path)
    weights = load_file(str(path / "model.safetensors"))
    generator = torch.Generator().manual_seed(NOISE_SEED)
    noisy = {}
    for name, tensor in weights.items():
        if tensor.dtype.is_floating_point and tensor.dim() >= 2:
            noise = torch.randn(tensor.shape, generator=generator) * tensor.std() * NOISE
            noisy[name] = (tensor + noise).contiguous()
        else:
            noisy[name] = tensor.contiguous()
    save_file(noisy, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def quality_rules(root: Path) -> Path:
    """Only the shipped quality rules: on a loaded 2-core machine a model load can take over a
    minute, and ``not-ready`` reverting a slow candidate would hide what this test is about."""
    rules = root / "rules"
    rules.mkdir()
    (rules / "quality.yaml").write_bytes((REPO_ROOT / "rules" / "quality.yaml").read_bytes())
    return rules


def _events(agent: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in agent.get("/api/events?limit=1000")["events"] if e["kind"] == kind]


def test_a_release_with_degraded_weights_is_reverted_by_the_decay_test(tmp_path: Path) -> None:
    begun = time.monotonic()
    model = degraded_model(tmp_path / "degraded-model")
    with running_agent(tmp_path, rules=quality_rules(tmp_path)) as agent:
        agent.wait(lambda s: s["last_good_release"] == "v1", "v1 promoted good", 180.0)
        print(f"degraded model built, v1 started and promoted: {time.monotonic() - begun:.1f} s")
        feedback = agent.post(
            "/api/feedback", {"items": [{"predicted": "billing", "label": "billing"}]}
        )
        assert feedback.status_code == 200
        windows = feedback.json()["feedback"]
        assert windows["live"]["total"] + windows["baseline"]["total"] == 1

        started = time.monotonic()
        resp = agent.post("/api/deploy", {"tag": "v2", "model": str(model), "task": "classify"})
        assert resp.status_code == 202
        # the revert is decided (v1 desired again); rolling back itself is test_agent_healing's
        agent.wait(lambda s: s["current_release"] == "v1", "v2 to be reverted", 180.0)
        elapsed = time.monotonic() - started

        releases = {r["tag"]: r for r in agent.get("/api/releases")["releases"]}
        assert releases["v2"]["status"] == "bad"
        rollbacks = [a for a in agent.actions() if a["kind"] == "rollback"]
        assert [a["rule"] for a in rollbacks] == ["candidate-accuracy-decay"]
        fired = {r["rule"] for r in agent.audit() if r["kind"] == "decision"}
        assert fired == {"candidate-accuracy-decay"}  # no threshold canary rule saw it
        (decay,) = [e for e in _events(agent, "decay") if e["subject"] == "v2"]
        assert "Welch: mean expected-label probability" in decay["message"]
        assert "McNemar: no golden-set item changed its verdict (8 items)" in decay["message"]
        print(f"deploy of degraded v2 -> revert decided: {elapsed:.1f} s")
