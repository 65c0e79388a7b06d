"""One fast tokenizer must never be used from two threads: ``/predict`` counts tokens on the event
loop while the batch thread tokenizes (HF fast tokenizers then fail with "Already borrowed")."""

from __future__ import annotations

import threading
from pathlib import Path

from inference.domain import PredictItem
from inference.models import load_predictor
from tests.unit.test_quantize import tiny_bert  # noqa: F401 (the fixture: a tiny BERT)

ROUNDS = 400


def test_token_counts_and_batches_in_two_threads_never_collide(tiny_bert: Path) -> None:  # noqa: F811
    predictor = load_predictor(model_dir=tiny_bert, task="embed", device="cpu")
    texts = ["the movie is good", "a bad movie " * 20, "good"]
    items = [PredictItem(text=t, top_k=1, tokens=8) for t in texts * 4]
    errors: list[BaseException] = []

    def batches() -> None:
        try:
            for _ in range(ROUNDS):
                predictor.predict_batch(items)
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    worker = threading.Thread(target=batches)
    worker.start()
    try:
        for _ in range(ROUNDS * 4):
            assert predictor.token_lengths(texts) == predictor.token_lengths(texts)
            if not worker.is_alive():
                break
    finally:
        worker.join()
    assert errors == []
