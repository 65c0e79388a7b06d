"""``warden drift test`` and the feature files it reads: exit codes 0/1/2, JSON, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.drift.detector import DriftInputError
from agent.drift.files import load_features

runner = CliRunner()
SEED = 11


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(SEED)
    ref, same, shifted = (rng.standard_normal((n, 5)) for n in (1000, 300, 300))
    shifted[:, 1] += 0.6
    paths = {
        "ref": tmp_path / "ref.npy",
        "same": tmp_path / "same.csv",
        "shifted": tmp_path / "shifted.jsonl",
    }
    np.save(paths["ref"], ref)
    np.savetxt(paths["same"], same, delimiter=",", header="a,b,c,d,e", comments="")
    paths["shifted"].write_text("".join(json.dumps(row) + "\n" for row in shifted.tolist()))
    return paths


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["drift", "test", *args])
    return result.exit_code, result.output


def test_no_drift_exits_0(files: dict[str, Path]) -> None:
    code, output = run("--reference", str(files["ref"]), "--current", str(files["same"]))
    assert code == 0, output
    assert output.startswith("no drift: corrected p-value")


def test_drift_exits_1_and_json_names_the_feature(files: dict[str, Path]) -> None:
    code, output = run(
        "--reference", str(files["ref"]), "--current", str(files["shifted"]), "--json"
    )
    assert code == 1, output
    doc = json.loads(output)
    assert doc["drift"] is True
    assert doc["drifted_features"] == ["f1"]
    assert doc["n_reference"] == 1000 and doc["n_current"] == 300
    assert len(doc["features"]) == 5
    assert set(doc["features"][0]) == {"name", "p_value", "corrected_p_value", "statistic"}


def test_alpha_and_correction_are_passed_through(files: dict[str, Path]) -> None:
    code, output = run(
        "--reference", str(files["ref"]), "--current", str(files["shifted"]),
        "--alpha", "0.001", "--correction", "fdr", "--json",
    )  # fmt: skip
    assert code == 1
    doc = json.loads(output)
    assert (doc["alpha"], doc["correction"]) == (0.001, "fdr")


def test_mismatched_dimensions_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((1000, 33)))
    np.save(tmp_path / "b.npy", np.zeros((300, 32)))
    code, output = run("--reference", str(tmp_path / "a.npy"), "--current", str(tmp_path / "b.npy"))
    assert code == 2
    assert "reference has 33 features per row but current has 32" in output


def test_too_few_samples_exit_2(files: dict[str, Path]) -> None:
    code, output = run("--reference", str(files["same"]), "--current", str(files["same"]))
    assert code == 2
    assert "reference has 300 rows; at least 1000 are needed" in output


def test_nans_exit_2(tmp_path: Path, files: dict[str, Path]) -> None:
    cur = np.ones((300, 5))
    cur[7, 3] = np.nan
    np.save(tmp_path / "nan.npy", cur)
    code, output = run("--reference", str(files["ref"]), "--current", str(tmp_path / "nan.npy"))
    assert code == 2
    assert "NaN or infinite value(s), the first at row 7, feature 3" in output


def test_a_missing_alibi_extra_is_bad_input_with_the_install_hint(files: dict[str, Path]) -> None:
    code, output = run(
        "--reference", str(files["ref"]), "--current", str(files["same"]), "--engine", "alibi"
    )
    assert code == 2
    assert "pip install 'warden[drift-alibi]'" in output


def test_observations_as_served_by_the_server_are_rows_with_confidence(tmp_path: Path) -> None:
    path = tmp_path / "obs.json"
    page = {
        "next": 2,
        "observations": [
            {"seq": 1, "at": 1.0, "features": [0.1, 0.2], "confidence": 0.9, "label": "a"},
            {"seq": 2, "at": 2.0, "features": [0.3, 0.4], "confidence": 0.8, "label": "b"},
        ],
    }
    path.write_text(json.dumps(page))
    assert load_features(path).tolist() == [[0.1, 0.2, 0.9], [0.3, 0.4, 0.8]]


def test_a_ragged_csv_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("1,2,3\n4,5,6\n7,8\n")
    with pytest.raises(DriftInputError, match=r"x.csv:3: 2 features, but the first row has 3"):
        load_features(path)


def test_an_unknown_file_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_text("")
    with pytest.raises(DriftInputError, match="unknown feature file type"):
        load_features(path)
