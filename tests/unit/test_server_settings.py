"""Command line of the model server and facts read from model directories (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.errors import ModelLoadError
from inference.modeldir import detect_task, read_config, weights_sha256
from inference.server import main
from inference.settings import Settings, build_parser, parse_settings


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARDEN_RELEASE", raising=False)
    assert parse_settings([]) == Settings()
    assert (Settings().host, Settings().port, Settings().release) == ("127.0.0.1", 8000, "dev")
    assert (Settings().max_batch, Settings().max_wait_ms, Settings().max_queue) == (32, 5.0, 256)


def test_release_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARDEN_RELEASE", "v7")
    assert parse_settings([]).release == "v7"
    assert parse_settings(["--release", "v8"]).release == "v8"


def test_every_flag_is_explained_in_help() -> None:
    text = build_parser().format_help()
    for flag in (
        "--model", "--task", "--intents", "--host", "--port", "--release", "--device",
        "--threads", "--max-batch", "--max-wait-ms", "--max-queue", "--max-chars",
        "--max-items", "--max-body-bytes", "--observations", "--log-level", "--load-delay",
        "--quantize", "--dtype", "--max-tokens", "--length-buckets",
    ):  # fmt: skip
        assert flag in text
    assert "for testing slow loads" in text


@pytest.mark.parametrize(
    "argv",
    [["--max-batch", "0"], ["--port", "x"], ["--task", "translate"], ["--max-wait-ms", "-1"]],
)
def test_bad_flags_exit_with_status_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("architectures", "task"),
    [
        (["BertForMaskedLM"], "fill-mask"),
        (["DistilBertForSequenceClassification"], "text-classification"),
        (["BertModel"], "classify"),
        (None, "classify"),
    ],
)
def test_auto_task_follows_the_architecture(architectures: list[str] | None, task: str) -> None:
    assert detect_task({"model_type": "bert", "architectures": architectures}, "auto") == task


def test_an_explicit_task_wins_over_the_architecture() -> None:
    assert detect_task({"architectures": ["BertForMaskedLM"]}, "embed") == "embed"


def test_read_config_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist or is not a directory"):
        read_config(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4}))
    with pytest.raises(ModelLoadError, match="no 'model_type'"):
        read_config(tmp_path)


def test_weights_sha256_is_the_sha256sum_of_a_single_file(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    assert weights_sha256(tmp_path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="has no weights"):
        weights_sha256(empty)


def test_serving_options_parse_into_settings() -> None:
    settings = parse_settings(
        ["--quantize", "dynamic-int8", "--max-tokens", "2048", "--length-buckets", "8,64,128"]
    )
    assert (settings.quantize, settings.dtype) == ("dynamic-int8", "float32")
    assert (settings.max_tokens, settings.length_buckets) == (2048, (8, 64, 128))
    assert parse_settings(["--length-buckets", "none"]).length_buckets == ()
    assert parse_settings(["--device", "cuda", "--dtype", "bfloat16"]).dtype == "bfloat16"
    assert Settings().length_buckets == (16, 32, 64, 128, 256)
    assert (Settings().quantize, Settings().dtype, Settings().max_tokens) == (
        "none",
        "float32",
        4096,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--quantize", "dynamic-int8", "--dtype", "float16"],
            "--quantize dynamic-int8 and --dtype float16 are alternatives, not a combination: "
            "int8 quantization is the CPU option, float16/bfloat16 the CUDA option; pick one",
        ),
        (
            ["--quantize", "dynamic-int8", "--device", "cuda"],
            "--quantize dynamic-int8 runs on CPU only (torch's dynamic int8 kernels have no "
            "CUDA version); use --device cpu, or --dtype float16 on CUDA",
        ),
        (
            ["--dtype", "float16", "--device", "cpu"],
            "--dtype float16 is for CUDA devices; on CPU use --quantize dynamic-int8 "
            "(or the default float32)",
        ),
        (
            ["--length-buckets", "64,32"],
            "argument --length-buckets: '64,32': bucket bounds must be positive and strictly "
            "increasing, e.g. 16,32,64,128",
        ),
        (
            ["--length-buckets", "short"],
            "argument --length-buckets: 'short' is not a comma-separated list of token counts, "
            "e.g. 16,32,64,128",
        ),
        (["--quantize", "int4"], "argument --quantize: invalid choice: 'int4'"),
    ],
)
def test_option_combinations_that_make_no_sense_are_refused_with_the_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("python -m inference: error: " + message)
