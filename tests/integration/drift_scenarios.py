"""Drift scenarios on real model features: seeded texts -> the default MiniLM intent router ->
the server's 32-dim projection + confidence, exactly as ``/v1/observations`` serves them.

Shared by ``test_drift_power.py`` (asserts detection) and ``tests/bench/bench_drift.py`` (reports
power, detection delay and the p-value plot). Texts come from templates with seeded slots:
customer-service queries for the four intents (the traffic the router was built for), and
unrelated text (recipes, sport, weather, history) for the domain shift.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from agent.drift.detector import DriftResult, DriftSettings, detect

SEED = 20_241_123
WINDOW = 500
REFERENCE = 1000
INTENTS = ("billing", "technical support", "product feedback", "account issue")

_SLOTS = {
    "plan": ["subscription", "annual plan", "monthly plan", "family plan", "pro account",
             "business plan", "student plan"],
    "amount": ["$9.99", "$20", "$49", "twice the usual amount", "$120", "€15", "£30"],
    "when": ["this month", "yesterday", "last week", "today", "since Monday", "again",
             "two days ago", "every morning"],
    "device": ["iPhone", "Android phone", "laptop", "tablet", "Windows PC", "Mac", "smart TV"],
    "feature": ["sync", "upload", "search", "export", "login page", "dashboard", "notifications",
                "dark mode", "calendar view", "offline mode"],
    "error": ["a timeout error", "error 500", "a blank screen", "a crash", "an endless spinner",
              "a certificate warning"],
    "food": ["pasta", "lentil soup", "banana bread", "roast chicken", "fried rice", "pancakes",
             "tomato salad", "apple pie"],
    "team": ["the home side", "the visitors", "the national team", "the league leaders",
             "the underdogs", "the defending champions"],
    "city": ["Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Toronto", "Cairo", "Perth"],
    "era": ["the Bronze Age", "the Roman Empire", "the Middle Ages", "the Renaissance",
            "the industrial revolution", "the Ming dynasty"],
}  # fmt: skip

_TEMPLATES = {
    "billing": [
        "I was charged {amount} for my {plan} {when}",
        "Why is my invoice for the {plan} higher {when}?",
        "Can I get a refund for the {amount} payment {when}?",
        "My card was declined when I paid for the {plan}",
        "There is a charge of {amount} on my statement I don't recognise",
        "Please send me a receipt for the {plan}",
        "How do I change the payment method for my {plan}?",
    ],
    "technical support": [
        "The app crashes on my {device} {when}",
        "I get {error} when I open the {feature}",
        "The {feature} stopped working on my {device} {when}",
        "How do I install the app on my {device}?",
        "My {device} shows {error} after the update",
        "The {feature} is very slow {when}",
    ],
    "product feedback": [
        "Please add {feature} to the {device} app",
        "I love the new {feature}, great work",
        "The {feature} would be better with more options",
        "It would be nice if the {plan} included {feature}",
        "The redesign of the {feature} is confusing",
        "Thank you for improving the {feature} {when}",
    ],
    "account issue": [
        "I cannot log in to my account {when}",
        "My password reset email never arrives",
        "How do I change the email address on my {plan}?",
        "My account was locked {when}",
        "I want to delete my account and my data",
        "Someone else logged in to my account from {city}",
    ],
    "unrelated": [
        "Simmer the {food} for twenty minutes and season to taste",
        "The recipe for {food} needs two eggs and a cup of flour",
        "{team} won the match after a late goal in extra time",
        "The coach of {team} praised the defence after the game",
        "Heavy rain is expected in {city} {when}",
        "The museum in {city} has a new exhibition about {era}",
        "Historians still debate how trade worked in {era}",
        "The temperature in {city} dropped below freezing {when}",
    ],
}


def texts(kind: str, n: int, rng: random.Random) -> list[str]:
    """``n`` seeded texts of one intent (or ``"unrelated"``)."""
    out = []
    for _ in range(n):
        template = rng.choice(_TEMPLATES[kind])
        out.append(template.format(**{k: rng.choice(v) for k, v in _SLOTS.items()}))
    return out


def traffic(n: int, rng: random.Random, *, shifted: float = 0.0,
            proportions: Sequence[float] = (0.25, 0.25, 0.25, 0.25)) -> list[str]:  # fmt: skip
    """``n`` texts: intents in ``proportions``, a ``shifted`` share of them unrelated text."""
    kinds = rng.choices(INTENTS, weights=proportions, k=n)
    kinds = ["unrelated" if rng.random() < shifted else k for k in kinds]
    return [texts(k, 1, rng)[0] for k in kinds]


@cache
def _predictor() -> object:
    from inference.models import load_predictor

    return load_predictor(model_dir=None, task="classify", threads=2)


def features(batch: Sequence[str]) -> np.ndarray:
    """The rows ``/v1/observations`` would serve for these texts: 32 projected features (rounded
    to 6 decimals as the server does) + top-1 confidence."""
    from inference.domain import PredictItem
    from inference.observations import Projection

    predictor = _predictor()
    rows = []
    for start in range(0, len(batch), 32):
        items = [PredictItem(text=t) for t in batch[start : start + 32]]
        predictions = predictor.predict_batch(items)  # type: ignore[attr-defined]
        embeddings = np.array([p.embedding for p in predictions])
        projected = np.round(Projection(embeddings.shape[1]).project(embeddings), 6)
        confidence = np.array([[p.score] for p in predictions])
        rows.append(np.hstack([projected, confidence]))
    return np.vstack(rows)


@dataclass(slots=True)
class Pools:
    """Featurised texts: a reference sample and live pools per intent and of unrelated text.

    Embedding is the slow part (hundreds of texts per second on 2 cores), so scenarios draw their
    windows from these pools (with replacement) instead of embedding every window anew.
    """

    reference: np.ndarray
    live: dict[str, np.ndarray]  # per intent, and "unrelated"

    def window(self, rng: np.random.Generator, *, n: int = WINDOW, shifted: float = 0.0,
               proportions: Sequence[float] = (0.25, 0.25, 0.25, 0.25)) -> np.ndarray:  # fmt: skip
        kinds = rng.choice(len(INTENTS), size=n, p=np.asarray(proportions) / sum(proportions))
        names = np.where(rng.random(n) < shifted, "unrelated", np.array(INTENTS)[kinds])
        rows = [self.live[str(k)][rng.integers(len(self.live[str(k)]))] for k in names]
        return np.array(rows)


def pools(seed: int = SEED, *, per_intent: int = 600, unrelated: int = 1000) -> Pools:
    """Embed the reference (1000 texts of the balanced intent mix) and the live pools."""
    rng = random.Random(seed)
    ref = features(traffic(REFERENCE, rng))
    live = {k: features(texts(k, per_intent, rng)) for k in INTENTS}
    live["unrelated"] = features(texts("unrelated", unrelated, rng))
    return Pools(reference=ref, live=live)


@dataclass(slots=True)
class Run:
    """One scenario: a verdict per window and when two in a row first drifted."""

    name: str
    shift_starts: int  # index of the first shifted window
    results: list[DriftResult] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # what each window was (for the plot)

    @property
    def p_values(self) -> list[float]:
        return [r.p_value for r in self.results]

    def detected_at(self, consecutive: int = 2) -> int | None:
        """Index of the window where ``consecutive`` drifting windows in a row completed."""
        streak = 0
        for i, r in enumerate(self.results):
            streak = streak + 1 if r.drift else 0
            if streak >= consecutive:
                return i
        return None

    def delay_samples(self, consecutive: int = 2) -> int | None:
        """Observations from the start of the shift until drift_detected would turn 1."""
        at = self.detected_at(consecutive)
        return None if at is None else (at - self.shift_starts + 1) * WINDOW


Plan = Sequence[tuple[str, dict[str, Any]]]
QUIET: Plan = [("no shift", {}), ("no shift", {})]
DOMAIN: Plan = [*QUIET, *[("unrelated text", {"shifted": 1.0})] * 3]
GRADUAL: Plan = [*QUIET, *[(f"{s:.0%} unrelated", {"shifted": s}) for s in
                           (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)]]  # fmt: skip
LABELS: Plan = [*QUIET, *[("70 % billing", {"proportions": (0.7, 0.1, 0.1, 0.1)})] * 3]
SCENARIOS = {"domain shift": DOMAIN, "gradual mix 0-50 %": GRADUAL, "label proportions": LABELS}


def run(name: str, data: Pools, plan: Plan, rng: np.random.Generator,
        settings: DriftSettings | None = None) -> Run:  # fmt: skip
    """Test one window per ``plan`` entry (label, ``Pools.window`` keyword arguments)."""
    settings = settings or DriftSettings()
    out = Run(name=name, shift_starts=len(QUIET))
    for label, kwargs in plan:
        out.results.append(detect(data.reference, data.window(rng, **kwargs), settings))
        out.labels.append(label)
    return out


def power(data: Pools, rng: np.random.Generator, trials: int = 100,
          settings: DriftSettings | None = None, **kwargs: Any) -> float:  # fmt: skip
    """Share of ``trials`` resampled windows of one kind that the detector flags."""
    settings = settings or DriftSettings()
    hits = sum(detect(data.reference, data.window(rng, **kwargs), settings).drift
               for _ in range(trials))  # fmt: skip
    return hits / trials
