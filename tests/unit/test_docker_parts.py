"""The Docker backend's pure parts: event parsing, stats arithmetic, who stopped a container."""

from __future__ import annotations

from pathlib import Path

from agent.backends.docker_events import ContainerEvent, parse_event
from agent.backends.docker_replicas import details_from, replica_from, url_from
from agent.backends.docker_stats import resource_sample
from agent.backends.docker_stops import StopLedger
from agent.clock import FakeClock
from agent.domain import Replica, ReplicaState

CID = "f" * 64


def test_die_event_is_parsed_with_its_exit_code_slot_and_engine_time() -> None:
    raw = {
        "Type": "container",
        "Action": "die",
        "Actor": {"ID": CID, "Attributes": {"exitCode": "137", "warden.slot": "inference-2"}},
        "time": 1795439685,
        "timeNano": 1795439685_123456789,
    }
    assert parse_event(raw, "warden.slot") == ContainerEvent(
        action="die", container_id=CID, slot="inference-2", at=1795439685.1234567, exit_code=137
    )


def test_kill_event_keeps_its_signal_and_other_types_are_ignored() -> None:
    raw = {
        "Type": "container",
        "Action": "kill",
        "Actor": {"ID": CID, "Attributes": {"signal": "15"}},
    }
    event = parse_event(raw, "warden.slot")
    assert event is not None and (event.signal, event.slot, event.exit_code) == ("15", "", None)
    assert parse_event({"Type": "network", "Action": "connect"}, "warden.slot") is None


def test_stats_give_cpu_of_one_core_and_memory_without_page_cache() -> None:
    stats = {
        "cpu_stats": {
            "cpu_usage": {"total_usage": 3_000_000_000},
            "system_cpu_usage": 20_000_000_000,
            "online_cpus": 2,
        },
        "precpu_stats": {
            "cpu_usage": {"total_usage": 2_500_000_000},
            "system_cpu_usage": 18_000_000_000,
        },
        "memory_stats": {
            "usage": 400 * 2**20,
            "limit": 1000 * 2**20,
            "stats": {"cache": 100 * 2**20},
        },
    }
    sample = resource_sample(stats)
    assert sample is not None
    assert sample.cpu_percent == 50.0  # 0.5 s of CPU in 2 s of two cores' time = half a core
    assert sample.memory_bytes == 300 * 2**20
    assert sample.memory_percent == 30.0


def test_first_stats_reading_has_nothing_to_compare_with() -> None:
    first = {
        "cpu_stats": {"cpu_usage": {"total_usage": 1}, "system_cpu_usage": 5},
        "precpu_stats": {},
    }
    assert resource_sample(first) is None


def test_docker_stop_by_a_person_is_left_alone_and_remembered(tmp_path: Path) -> None:
    path = tmp_path / "docker-stopped.json"
    ledger = StopLedger(path, FakeClock())
    assert ledger.killed(CID, "15")
    assert ledger.by_person(CID)  # the die that follows is not a crash
    assert ledger.stopped(CID)
    assert StopLedger(path, FakeClock()).left_alone(CID)  # a restarted agent knows too
    ledger.started(CID)
    assert not ledger.left_alone(CID)
    assert not StopLedger(path, FakeClock()).left_alone(CID)


def test_wardens_own_stop_and_a_sigkill_are_not_a_persons_stop(tmp_path: Path) -> None:
    ledger = StopLedger(None, FakeClock())
    assert not ledger.killed(CID, "9")  # docker kill: a crash
    ledger.plan(CID)
    assert not ledger.killed(CID, "15") and not ledger.stopped(CID)
    assert not ledger.left_alone(CID)


def test_planned_marks_expire() -> None:
    clock = FakeClock()
    ledger = StopLedger(None, clock)
    ledger.plan(CID)
    clock.advance(121)
    assert not ledger.is_planned(CID)


def test_stops_just_before_the_engine_went_away_are_forgotten(tmp_path: Path) -> None:
    clock = FakeClock()
    ledger = StopLedger(tmp_path / "s.json", clock)
    old, recent = "a" * 64, "b" * 64
    ledger.killed(old, "15")
    ledger.stopped(old)
    clock.advance(60)
    ledger.killed(recent, "15")
    ledger.stopped(recent)
    assert ledger.engine_lost() == [recent]
    assert ledger.left_alone(old) and not ledger.left_alone(recent)


def _summary(state: str = "running") -> dict[str, object]:
    return {
        "Id": CID,
        "State": state,
        "Labels": {
            "warden.slot": "inference-2",
            "warden.release": "good",
            "warden.generation": "4",
        },
        "Ports": [{"IP": "127.0.0.1", "PrivatePort": 8000, "PublicPort": 32777, "Type": "tcp"}],
        "NetworkSettings": {"Networks": {"warden": {"IPAddress": "172.20.0.5"}}},
    }


def test_running_container_is_a_running_replica_on_its_published_port() -> None:
    inspect = {"State": {"Status": "running", "Pid": 4242, "StartedAt": "2026-11-23T13:14:36.5Z"}}
    replica = replica_from(
        _summary(), details_from(inspect, "running"), url=url_from(_summary(), None),
        stopped_by_person=False,
    )  # fmt: skip
    assert replica == Replica(
        id="inference-2",
        url="http://127.0.0.1:32777",
        release="good",
        state=ReplicaState.RUNNING,
        generation=4,
        pid=4242,
        container_id=CID[:12],
        started_at=1795439676.5,
    )
    assert url_from(_summary(), "warden") == "http://172.20.0.5:8000"


def test_oom_killed_container_is_exited_with_its_code_even_while_the_list_lags() -> None:
    inspect = {"State": {"Status": "exited", "Pid": 0, "ExitCode": 137, "OOMKilled": True}}
    details = details_from(inspect, "running")  # the list still said running
    replica = replica_from(_summary(), details, url="", stopped_by_person=False)
    assert (replica.state, replica.exit_code, replica.oom_killed, replica.pid) == (
        ReplicaState.EXITED,
        137,
        True,
        None,
    )


def test_container_a_person_stopped_is_stopped_not_exited() -> None:
    details = details_from({"State": {"Status": "exited", "ExitCode": 0}}, "exited")
    replica = replica_from(_summary("exited"), details, url="", stopped_by_person=True)
    assert replica.state is ReplicaState.STOPPED and replica.exit_code is None
