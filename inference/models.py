"""Loading a local Hugging Face model and running the server's four tasks on it.

- ``embed``: mean-pooled last hidden state over real tokens, L2-normalised.
- ``classify``: intent routing by nearest prototype. Each intent's prototype is the L2-normalised
  mean of its example phrases' embeddings; a text's scores are ``softmax(CLASSIFY_SCALE * cos)``
  over the prototypes. Cosines of sentence embeddings sit in a narrow band (roughly 0.1-0.7 for
  all-MiniLM-L6-v2), so an unscaled softmax would be nearly uniform; a scale of 20 (the inverse of
  the 0.05 temperature common for contrastive sentence encoders) turns a cosine gap of 0.1 into
  odds of e^2 ~ 7:1, which gives usable confidences without making every answer 0.99.
- ``fill-mask``: for every mask token, the top-k vocabulary entries by probability, best first.
- ``text-classification``: softmax over a sequence-classification head; labels from ``id2label``.

Nothing downloads: the hub is switched offline and every load is ``local_files_only``.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the server never downloads weights at run time
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from inference.domain import ModelInfo, Prediction, PredictItem, Predictor, TokenScore
from inference.errors import InputError, ModelLoadError
from inference.intents import DEFAULT_INTENTS_FILE, Intent, load_intents
from inference.modeldir import (
    default_model_dir,
    detect_task,
    model_name,
    read_config,
    weights_sha256,
)
from inference.precision import Precision, apply_precision, pick_device
from inference.settings import DeviceChoice, TaskChoice

CLASSIFY_SCALE = 20.0
"""Inverse temperature of the classify softmax over cosine similarities (see module docs)."""

log = logging.getLogger(__name__)


def load_predictor(
    *,
    model_dir: Path | None,
    task: TaskChoice,
    device: DeviceChoice = "auto",
    intents_path: Path | None = None,
    name: str | None = None,
    threads: int | None = None,
    precision: Precision | None = None,
) -> Predictor:
    """Load the model for ``task`` from ``model_dir`` (None = the packaged default).

    Raises ``ModelLoadError`` (or ``ConfigError`` for a bad intents file) saying what is wrong.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    directory = default_model_dir() if model_dir is None else model_dir
    config = read_config(directory)
    resolved = detect_task(config, task)
    precision = precision or Precision()
    info = ModelInfo(
        name=model_name(directory, is_default=model_dir is None, override=name),
        path=directory.resolve(),
        weights_sha256=weights_sha256(directory),
        task=resolved,
        device=pick_device(device, precision),
        hidden_size=int(config.get("hidden_size") or config.get("dim") or 0),
        quantize=precision.quantize,
        dtype=precision.dtype,
    )
    log.info(
        "loading %s from %s for task %s on %s (%s%s)",
        *(info.name, info.path, resolved, info.device, info.dtype),
        ", int8 Linear layers" if info.quantize == "dynamic-int8" else "",
    )
    if resolved == "classify":
        intents = load_intents(intents_path or DEFAULT_INTENTS_FILE)
        return IntentPredictor(info, intents=intents)
    predictor_class: type[_Encoder] = {
        "embed": EmbedPredictor,
        "fill-mask": FillMaskPredictor,
        "text-classification": TextClassPredictor,
    }[resolved]
    return predictor_class(info)


def _max_length(directory: Path, tokenizer: Any, model: Any) -> int:
    """Longest token sequence the model takes (position embeddings, tokenizer, ST config)."""
    limits = [int(getattr(model.config, "max_position_embeddings", 0) or 0)]
    model_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    limits.append(model_max if model_max < 1_000_000 else 0)  # "no limit" sentinel
    sentence_config = directory / "sentence_bert_config.json"
    if sentence_config.is_file():
        limits.append(int(json.loads(sentence_config.read_text()).get("max_seq_length") or 0))
    positive = [limit for limit in limits if limit > 0]
    return min(positive) if positive else 512


class _Encoder:
    """Shared tokenizer/model plumbing; subclasses choose the model head and the output."""

    auto_class: Any = AutoModel

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
                info.path, local_files_only=True
            )
            # token_lengths runs on the event loop while the batch thread tokenizes: one fast
            # (Rust) tokenizer used from two threads fails with "RuntimeError: Already
            # borrowed", so the length count has an instance of its own.
            self._length_tokenizer = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
                info.path, local_files_only=True
            )
            self.model = self.auto_class.from_pretrained(info.path, local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot load {info.path}: {type(exc).__name__}: {exc}") from exc
        precision = Precision(quantize=info.quantize, dtype=info.dtype)
        self.model = apply_precision(self.model, precision, info.device)
        self.max_length = _max_length(info.path, self.tokenizer, self.model)

    def check_inputs(self, texts: Sequence[str]) -> None:
        """Every text is answerable by plain encoders; subclasses add task rules."""

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model sees it: special tokens included, truncated."""
        encoded = self._length_tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [len(ids) for ids in encoded["input_ids"]]

    def warm_up(self, lengths: Sequence[int] = ()) -> None:
        """A padded batch of two, then a batch of two at each of ``lengths`` tokens.

        ``lengths`` are the batcher's bucket bounds: every sequence length a bucket can pad to
        gets one pass, so the first real request of each shape is not the slow one.
        """
        texts = [[self._warm_up_text(4), self._warm_up_text(6)]]
        for length in sorted({min(max(length, 3), self.max_length) for length in lengths}):
            text = self._warm_up_text(length)
            texts.append([text, text])
        try:
            for batch in texts:
                self.predict_batch([PredictItem(text=text, top_k=1) for text in batch])
        except Exception as exc:
            raise ModelLoadError(
                f"warm-up forward pass failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _warm_up_text(self, length: int) -> str:
        """A text of at least ``length`` tokens (truncation cuts it to the model's limit)."""
        return " ".join(["a"] * max(1, length - 2))

    def predict_batch(self, items: Sequence[PredictItem]) -> list[Prediction]:
        """One prediction per item, in order (runs on the batch worker thread)."""
        with torch.inference_mode():
            return self._predict([item.text for item in items], items)

    def _predict(self, texts: list[str], items: Sequence[PredictItem]) -> list[Prediction]:
        encoded = self._encode(texts)
        hidden = self.model(**encoded).last_hidden_state
        embeddings = mean_pool(hidden, encoded["attention_mask"])
        return self._finish(embeddings, items)

    def _finish(self, embeddings: torch.Tensor, items: Sequence[PredictItem]) -> list[Prediction]:
        return [
            Prediction(label=None, score=None, embedding=tuple(row)) for row in embeddings.tolist()
        ]

    def _encode(self, texts: list[str]) -> Any:
        encoded = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return encoded.to(self.info.device)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over real (unpadded) tokens, L2-normalised per row.

    Computed in float32 whatever the model's dtype: a float16 sum over 256 tokens loses digits.
    """
    hidden = hidden.float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2.0, dim=-1)


class EmbedPredictor(_Encoder):
    """``embed``: sentence embeddings only."""

    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)


class IntentPredictor(_Encoder):
    """``classify``: nearest intent prototype by cosine, softmax over scaled cosines."""

    def __init__(self, info: ModelInfo, *, intents: Sequence[Intent]) -> None:
        super().__init__(info)
        self.labels = tuple(intent.label for intent in intents)
        with torch.inference_mode():
            prototypes = []
            for intent in intents:
                encoded = self._encode(list(intent.examples))
                hidden = self.model(**encoded).last_hidden_state
                centroid = mean_pool(hidden, encoded["attention_mask"]).mean(dim=0)
                prototypes.append(torch.nn.functional.normalize(centroid, dim=0))
            self.prototypes = torch.stack(prototypes)

    def _finish(self, embeddings: torch.Tensor, items: Sequence[PredictItem]) -> list[Prediction]:
        probabilities = torch.softmax(CLASSIFY_SCALE * embeddings @ self.prototypes.T, dim=-1)
        return _labelled(self.labels, probabilities, embeddings)


class TextClassPredictor(_Encoder):
    """``text-classification``: a sequence-classification head; labels from ``id2label``."""

    auto_class = AutoModelForSequenceClassification

    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        id2label = self.model.config.id2label or {}
        count = int(self.model.config.num_labels)
        self.labels = tuple(str(id2label.get(i, f"LABEL_{i}")) for i in range(count))

    def _predict(self, texts: list[str], items: Sequence[PredictItem]) -> list[Prediction]:
        encoded = self._encode(texts)
        output = self.model(**encoded, output_hidden_states=True)
        embeddings = mean_pool(output.hidden_states[-1], encoded["attention_mask"])
        probabilities = torch.softmax(output.logits.float(), dim=-1)
        return _labelled(self.labels, probabilities, embeddings)


def _labelled(
    labels: Sequence[str], probabilities: torch.Tensor, embeddings: torch.Tensor
) -> list[Prediction]:
    predictions = []
    for probs, embedding in zip(probabilities.tolist(), embeddings.tolist(), strict=True):
        best = max(range(len(labels)), key=probs.__getitem__)
        predictions.append(
            Prediction(
                label=labels[best],
                score=probs[best],
                embedding=tuple(embedding),
                scores=dict(zip(labels, probs, strict=True)),
            )
        )
    return predictions


class FillMaskPredictor(_Encoder):
    """``fill-mask``: top-k tokens for every mask position, best first."""

    auto_class = AutoModelForMaskedLM

    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        if self.tokenizer.mask_token is None:
            raise ModelLoadError(f"{info.path}: the tokenizer has no mask token; not a masked LM")
        self.mask_token: str = self.tokenizer.mask_token
        self.mask_token_id: int = self.tokenizer.mask_token_id

    def check_inputs(self, texts: Sequence[str]) -> None:
        """Each text needs a mask token within the model's token limit."""
        for index, text in enumerate(texts):
            if self.mask_token not in text:
                raise InputError(
                    code="missing_mask",
                    message=f"inputs[{index}]: fill-mask needs at least one {self.mask_token} "
                    "token in the text",
                    field=f"inputs[{index}]",
                )
        encoded = self._length_tokenizer(
            list(texts), truncation=True, max_length=self.max_length
        )  # on the event loop: never the batch thread's tokenizer
        for index, ids in enumerate(encoded["input_ids"]):
            if self.mask_token_id not in ids:
                raise InputError(
                    code="mask_truncated",
                    message=f"inputs[{index}]: every {self.mask_token} is beyond the model's "
                    f"{self.max_length}-token limit; put a mask earlier in the text",
                    field=f"inputs[{index}]",
                    limit=self.max_length,
                )

    def _warm_up_text(self, length: int) -> str:
        """Texts with a mask first, so the head runs and truncation keeps the mask."""
        return " ".join([self.mask_token, *["a"] * max(0, length - 3)])

    def _predict(self, texts: list[str], items: Sequence[PredictItem]) -> list[Prediction]:
        encoded = self._encode(texts)
        output = self.model(**encoded, output_hidden_states=True)
        embeddings = mean_pool(output.hidden_states[-1], encoded["attention_mask"])
        vocab = output.logits.shape[-1]
        k_max = min(max(item.top_k for item in items), vocab)
        is_mask = encoded["input_ids"] == self.mask_token_id
        rows, positions = is_mask.nonzero(as_tuple=True)
        probs = torch.softmax(output.logits[rows, positions].float(), dim=-1)
        top = torch.topk(probs, k=k_max, dim=-1)
        per_item: list[list[tuple[TokenScore, ...]]] = [[] for _ in items]
        for row, scores, ids in zip(
            rows.tolist(), top.values.tolist(), top.indices.tolist(), strict=True
        ):
            k = min(items[row].top_k, vocab)
            per_item[row].append(
                tuple(self._token(i, s) for i, s in zip(ids[:k], scores[:k], strict=True))
            )
        predictions = []
        for masks, embedding in zip(per_item, embeddings.tolist(), strict=True):
            first = masks[0][0] if masks and masks[0] else None
            predictions.append(
                Prediction(
                    label=first.token if first else None,
                    score=first.score if first else None,
                    embedding=tuple(embedding),
                    masks=tuple(masks),
                )
            )
        return predictions

    def _token(self, token_id: int, score: float) -> TokenScore:
        token = self.tokenizer.decode([token_id]).strip()
        return TokenScore(token=token, score=score, token_id=token_id)
