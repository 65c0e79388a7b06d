"""agent/file_sd.py: the Prometheus file_sd target file the agent keeps up to date."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from agent.config import load_config
from agent.domain import Replica, ReplicaState
from agent.errors import ConfigError
from agent.file_sd import TargetFile, target_groups, write_targets


def replica(slot: str, port: int, state: ReplicaState = ReplicaState.RUNNING) -> Replica:
    return Replica(id=slot, url=f"http://127.0.0.1:{port}", release="v1", state=state)


def test_one_group_per_replica_with_service_and_replica_labels_sorted_by_slot() -> None:
    groups = target_groups(
        [replica("inference-2", 8001), replica("inference-1", 8000)], service="inference"
    )
    assert groups == [
        {
            "targets": ["127.0.0.1:8000"],
            "labels": {"service": "inference", "replica": "inference-1"},
        },
        {
            "targets": ["127.0.0.1:8001"],
            "labels": {"service": "inference", "replica": "inference-2"},
        },
    ]


def test_stopped_replicas_are_left_out_and_exited_ones_stay_so_their_up_drops_to_zero() -> None:
    groups = target_groups(
        [
            replica("inference-1", 8000, ReplicaState.EXITED),
            replica("inference-2", 8001, ReplicaState.STOPPED),
        ],
        service="inference",
    )
    assert [g["labels"]["replica"] for g in groups] == ["inference-1"]


def test_a_replica_without_an_address_is_not_a_target() -> None:
    nowhere = Replica(id="inference-1", url="", release="v1", state=ReplicaState.MISSING)
    assert target_groups([nowhere], service="inference") == []


def test_written_file_is_the_json_prometheus_reads_and_no_temporary_file_stays(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sd" / "inference.json"
    groups = target_groups([replica("inference-1", 8000)], service="inference")

    write_targets(path, groups)

    assert json.loads(path.read_text()) == groups
    assert sorted(p.name for p in path.parent.iterdir()) == ["inference.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_rewrite_replaces_the_file_instead_of_writing_into_it(tmp_path: Path) -> None:
    path = tmp_path / "inference.json"
    write_targets(path, [])
    before = path.stat().st_ino

    write_targets(path, target_groups([replica("inference-1", 8000)], service="inference"))

    assert path.stat().st_ino != before  # a new file moved into place (os.replace)


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "inference.json"
    write_targets(path, [])

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_targets(path, target_groups([replica("inference-1", 8000)], service="inference"))

    assert path.read_text() == "[]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inference.json"]


def test_target_file_is_rewritten_only_when_the_targets_change(tmp_path: Path) -> None:
    targets = TargetFile(tmp_path / "inference.json", service="inference")

    assert targets.update([replica("inference-1", 8000)]) is True
    assert targets.update([replica("inference-1", 8000)]) is False
    assert targets.update([replica("inference-1", 8000), replica("inference-2", 8001)]) is True
    assert len(json.loads(targets.path.read_text())) == 2


def test_target_file_deleted_by_someone_is_written_again(tmp_path: Path) -> None:
    targets = TargetFile(tmp_path / "inference.json", service="inference")
    targets.update([replica("inference-1", 8000)])
    targets.path.unlink()

    assert targets.update([replica("inference-1", 8000)]) is True
    assert targets.path.exists()


def test_target_file_that_cannot_be_written_logs_and_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    targets = TargetFile(blocker / "inference.json", service="inference")

    with caplog.at_level(logging.WARNING, logger="agent.file_sd"):
        assert targets.update([replica("inference-1", 8000)]) is False

    assert f"cannot write Prometheus targets to {blocker / 'inference.json'}" in caplog.text


def test_config_file_sd_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "warden.yaml"
    config.write_text("prometheus:\n  file_sd: sd/inference.json\n")

    assert load_config(config).prometheus.file_sd == tmp_path / "sd" / "inference.json"


def test_config_without_prometheus_section_writes_no_target_file(tmp_path: Path) -> None:
    config = tmp_path / "warden.yaml"
    config.write_text("service: inference\n")

    assert load_config(config).prometheus.file_sd is None


def test_config_rejects_an_unknown_prometheus_key(tmp_path: Path) -> None:
    config = tmp_path / "warden.yaml"
    config.write_text("prometheus:\n  file_sd: a.json\n  scrape: 1s\n")

    with pytest.raises(ConfigError) as error:
        load_config(config)

    assert "prometheus.scrape" in str(error.value)
