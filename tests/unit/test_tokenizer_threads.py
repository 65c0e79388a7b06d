"""One fast tokenizer must never be used from two threads: ``/predict`` counts tokens on the event
loop while the batch thread tokenizes (HF fast tokenizers then fail with "Already borrowed")."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from inference.domain import PredictItem
from inference.models import load_predictor

VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "is", "good", "bad", "movie")
ROUNDS = 400


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-bert-threads")
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory)
    BertTokenizer(vocab_file=str(vocab)).save_pretrained(directory)
    return directory


def test_token_counts_and_batches_in_two_threads_never_collide(tiny_bert: Path) -> None:
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
