"""The four tasks end to end: a real server process per model, HTTP on loopback."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import RunningServer, TinyModels, running_server

pytestmark = pytest.mark.integration

# Phrasings written for this test; none of them is an example phrase in inference/intents.yaml.
HELD_OUT = [
    ("You billed me the wrong amount for March", "billing"),
    ("I need a copy of last month's invoice for my accountant", "billing"),
    ("Why did my bank show two payments to your company?", "billing"),
    ("How much will the premium plan cost me per year?", "billing"),
    ("I cancelled but you still took money from my card", "billing"),
    ("Can you change my billing cycle to the first of the month?", "billing"),
    ("The application freezes when I click save", "technical support"),
    ("I keep getting a 500 error on the login page", "technical support"),
    ("Bluetooth pairing fails with my headphones", "technical support"),
    ("The printer driver won't install on my mac", "technical support"),
    ("Notifications stopped arriving after I upgraded iOS", "technical support"),
    ("The export button does nothing when I press it", "technical support"),
    ("Really enjoying the product, keep up the good work", "product feedback"),
    ("Could you add keyboard shortcuts for power users?", "product feedback"),
    ("The colours in the new theme are hard to read", "product feedback"),
    ("I'd love to see a calendar view in the next release", "product feedback"),
    ("Honestly the old layout was better than this one", "product feedback"),
    ("Your onboarding tutorial was clear and helpful", "product feedback"),
    ("I can't remember my login details", "account issue"),
    ("Please reset the two-factor authentication on my profile", "account issue"),
    ("How do I close my account permanently?", "account issue"),
    ("My profile says it is suspended, why?", "account issue"),
    ("I want to update the phone number linked to my account", "account issue"),
    ("Someone changed my password without my permission", "account issue"),
]
INTENTS = {"billing", "technical support", "product feedback", "account issue"}


def predict(server: RunningServer, payload: dict[str, object]) -> httpx.Response:
    return httpx.post(server.url + "/predict", json=payload, timeout=60.0)


@pytest.fixture(scope="module")
def embed_server(tiny_models: TinyModels) -> Iterator[RunningServer]:
    with running_server(["--model", str(tiny_models.masked_lm), "--task", "embed"]) as server:
        yield server


def test_classify_routes_held_out_phrasings_with_at_least_90_percent_accuracy(
    default_server: RunningServer,
) -> None:
    texts = [text for text, _ in HELD_OUT]
    response = predict(default_server, {"inputs": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "classify"
    assert body["model"] == "all-MiniLM-L6-v2"
    assert body["release"] == "v-test"
    labels = [p["label"] for p in body["predictions"]]
    correct = sum(got == want for got, (_, want) in zip(labels, HELD_OUT, strict=True))
    assert len(HELD_OUT) >= 20
    assert correct / len(HELD_OUT) >= 0.9, list(zip(texts, labels, strict=True))


def test_classify_scores_cover_every_intent_and_sum_to_one(default_server: RunningServer) -> None:
    response = predict(default_server, {"inputs": "I was charged twice this month"})
    assert response.status_code == 200
    (prediction,) = response.json()["predictions"]
    assert set(prediction["scores"]) == INTENTS
    assert math.isclose(sum(prediction["scores"].values()), 1.0, abs_tol=1e-5)
    assert prediction["label"] == "billing"
    assert prediction["score"] == max(prediction["scores"].values())


def test_fill_mask_returns_top_k_tokens_sorted_by_probability(
    fill_mask_server: RunningServer,
) -> None:
    response = predict(fill_mask_server, {"inputs": ["the movie was [MASK]"], "top_k": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "fill-mask"
    (prediction,) = body["predictions"]
    tokens = prediction["tokens"]
    assert len(tokens) == 7
    scores = [t["score"] for t in tokens]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert prediction["label"] == tokens[0]["token"]
    assert prediction["score"] == tokens[0]["score"]
    assert all(isinstance(t["token_id"], int) for t in tokens)


def test_fill_mask_accepts_chinese_with_mask_in_the_middle(fill_mask_server: RunningServer) -> None:
    response = predict(fill_mask_server, {"inputs": "床前明月光，疑是地[MASK]霜", "top_k": 3})
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert len(prediction["tokens"]) == 3
    assert prediction["masks"] == [prediction["tokens"]]


def test_fill_mask_answers_every_mask_in_order(fill_mask_server: RunningServer) -> None:
    response = predict(fill_mask_server, {"inputs": ["[MASK] 前 明 [MASK] 光"], "top_k": 2})
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert [len(mask) for mask in prediction["masks"]] == [2, 2]
    assert prediction["tokens"] == prediction["masks"][0]


def test_text_classification_uses_labels_from_the_model_config(
    classifier_server: RunningServer, tiny_models: TinyModels
) -> None:
    response = predict(classifier_server, {"inputs": ["i love this movie", "awful service"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "text-classification"
    assert body["model"] == "tiny-classifier"
    for prediction in body["predictions"]:
        assert set(prediction["scores"]) == set(tiny_models.labels)
        assert math.isclose(sum(prediction["scores"].values()), 1.0, abs_tol=1e-5)
        assert prediction["label"] in tiny_models.labels


def test_embed_returns_unit_length_vectors_one_per_input(embed_server: RunningServer) -> None:
    response = predict(embed_server, {"inputs": ["hello world", "this movie is great", "月光"]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    for prediction in predictions:
        assert prediction["label"] is None
        assert prediction["score"] is None
        vector = prediction["embedding"]
        assert len(vector) == 32  # the tiny model's hidden size
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-5)


def test_a_single_string_gives_a_list_of_one_prediction(default_server: RunningServer) -> None:
    response = predict(default_server, {"inputs": "my invoice is wrong"})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1
