"""Precision options on real models: int8 really quantizes, keeps the golden-set answers, warms up
every bucket length, and impossible device/precision pairs fail with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertModel, BertTokenizer

from inference.domain import PredictItem
from inference.errors import ModelLoadError
from inference.models import load_predictor
from inference.precision import Precision, count_quantized_linear, pick_device

REPO = Path(__file__).resolve().parents[2]
INT8 = Precision(quantize="dynamic-int8")
VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "is", "good", "bad", "movie")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BertModel (2 layers, hidden 32, 128 positions) with its tokenizer."""
    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory)
    BertTokenizer(vocab_file=str(vocab)).save_pretrained(directory)
    return directory


def test_int8_replaces_every_linear_layer_with_a_quantized_one(tiny_bert: Path) -> None:
    float32 = load_predictor(model_dir=tiny_bert, task="embed", device="cpu")
    int8 = load_predictor(model_dir=tiny_bert, task="embed", device="cpu", precision=INT8)
    linear = [m for m in float32.model.modules() if type(m) is torch.nn.Linear]  # type: ignore[attr-defined]
    assert len(linear) == 2 * 6 + 1  # per layer q, k, v, attention out, intermediate, out; pooler
    assert count_quantized_linear(int8.model) == len(linear)  # type: ignore[attr-defined]
    assert not [m for m in int8.model.modules() if type(m) is torch.nn.Linear]  # type: ignore[attr-defined]
    assert count_quantized_linear(float32.model) == 0  # type: ignore[attr-defined]
    quantized = [m for m in int8.model.modules() if hasattr(m, "weight") and callable(m.weight)]  # type: ignore[attr-defined]
    assert {m.weight().dtype for m in quantized} == {torch.qint8}
    assert {m.weight().qscheme() for m in quantized} == {torch.per_channel_affine}
    assert (int8.info.quantize, int8.info.dtype, int8.info.device) == (
        "dynamic-int8",
        "float32",
        "cpu",
    )


def test_int8_gives_the_same_top1_as_float32_on_the_golden_set() -> None:
    golden = yaml.safe_load((REPO / "rules" / "canaries.yaml").read_text(encoding="utf-8"))
    assert golden["task"] == "classify"
    items = [PredictItem(text=canary["input"]) for canary in golden["canaries"]]
    expected = [canary["expected"] for canary in golden["canaries"]]
    float32 = load_predictor(model_dir=None, task="classify", device="cpu")
    int8 = load_predictor(model_dir=None, task="classify", device="cpu", precision=INT8)
    assert count_quantized_linear(int8.model) > 0  # type: ignore[attr-defined]
    want, got = float32.predict_batch(items), int8.predict_batch(items)
    assert [p.label for p in want] == expected
    assert [p.label for p in got] == expected
    for canary, prediction in zip(golden["canaries"], got, strict=True):
        assert prediction.score is not None
        assert prediction.score >= canary["min_confidence"], canary["name"]


def test_warm_up_runs_one_pass_at_every_bucket_length(tiny_bert: Path) -> None:
    predictor = load_predictor(model_dir=tiny_bert, task="embed", device="cpu", precision=INT8)
    lengths: list[int] = []

    def record(_: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        input_ids = kwargs["input_ids"]
        assert isinstance(input_ids, torch.Tensor)
        lengths.append(int(input_ids.shape[1]))

    predictor.model.register_forward_pre_hook(record, with_kwargs=True)  # type: ignore[attr-defined]
    predictor.warm_up((16, 32, 64, 512))
    # a padded batch of two short texts, then each bound; 512 is cut to the model's 128 positions
    assert lengths == [6, 16, 32, 64, 128]


def test_token_lengths_count_special_tokens_and_stop_at_the_model_limit(tiny_bert: Path) -> None:
    predictor = load_predictor(model_dir=tiny_bert, task="embed", device="cpu")
    assert predictor.token_lengths(["good movie", "a " * 500]) == [4, 128]


def test_half_precision_on_a_machine_without_a_gpu_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError) as refused:
        pick_device("auto", Precision(dtype="float16"))
    assert str(refused.value) == (
        "--dtype float16 needs a CUDA device and torch sees none (--device auto resolved to "
        "cpu); on CPU use --quantize dynamic-int8 or float32"
    )
    with pytest.raises(ModelLoadError, match="--device cuda was given but torch sees no CUDA"):
        pick_device("cuda", Precision(dtype="bfloat16"))
    assert pick_device("auto", INT8) == "cpu"


def test_int8_with_auto_device_stays_on_cpu_even_when_a_gpu_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto", INT8) == "cpu"
    assert pick_device("auto", Precision()) == "cuda"
    assert pick_device("auto", Precision(dtype="float16")) == "cuda"
