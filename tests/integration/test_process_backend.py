"""The process backend with real child processes, tests/integration/fake_server.py as server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from agent.backends.base import ReleaseSpec
from agent.backends.process import ProcessBackend
from agent.domain import EngineEvent, ReplicaState
from agent.errors import BackendError
from agent.probes import probe_health

pytestmark = pytest.mark.integration

FAKE_SERVER = str(Path(__file__).with_name("fake_server.py"))
MARKER = "WARDEN_TEST_MARKER"  # env var set on every replica so teardown finds stragglers


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(0.02)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def base_port() -> int:
    """A port with the next three ports free too."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < 65000 and all(_free(port + i) for i in range(4)):
            return port
    raise RuntimeError("no run of four free ports")


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[str]:
    """Kill every process started for this test, whatever the test did (even on failure)."""
    value = str(tmp_path)
    yield value
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == value:
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


@pytest.fixture
def make_backend(
    tmp_path: Path, base_port: int, marker: str
) -> Iterator[Callable[..., ProcessBackend]]:
    backends: list[ProcessBackend] = []

    def make(**overrides: object) -> ProcessBackend:
        options: dict[str, object] = {
            "state_dir": tmp_path / "state",
            "base_port": base_port,
            "command": [sys.executable, FAKE_SERVER],
            "grace_s": 3.0,
        }
        options.update(overrides)
        backend = ProcessBackend(**options)  # type: ignore[arg-type]
        backends.append(backend)
        return backend

    yield make
    for backend in reversed(backends):
        backend.close()


@pytest.fixture
def release(marker: str) -> ReleaseSpec:
    return ReleaseSpec(tag="v1", env={MARKER: marker})


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as http:
        yield http


def healthy(client: httpx.Client, url: str) -> bool:
    return probe_health(client, url, 0.5).ok


def state_of(backend: ProcessBackend, slot: str = "inference-1") -> ReplicaState:
    return next(r.state for r in backend.list_replicas() if r.id == slot)


class Events:
    """Collects events from ``on_event`` and lets a test wait for the first one."""

    def __init__(self) -> None:
        self.received: list[EngineEvent] = []
        self.arrived = threading.Event()

    def __call__(self, event: EngineEvent) -> None:
        self.received.append(event)
        self.arrived.set()


def test_started_replica_is_running_on_base_port_and_recorded(
    make_backend: Callable[..., ProcessBackend],
    release: ReleaseSpec,
    base_port: int,
    client: httpx.Client,
    tmp_path: Path,
) -> None:
    backend = make_backend()
    replica = backend.start_replica("inference-1", release, 3)

    assert replica.state is ReplicaState.RUNNING
    assert replica.url == f"http://127.0.0.1:{base_port}"
    assert replica.pid is not None and psutil.pid_exists(replica.pid)
    assert (replica.release, replica.generation) == ("v1", 3)
    wait_until(lambda: healthy(client, replica.url))
    record = json.loads((tmp_path / "state" / "replicas.json").read_text())["replicas"]
    assert record["inference-1"]["pid"] == replica.pid
    assert record["inference-1"]["port"] == base_port
    assert record["inference-1"]["release"]["tag"] == "v1"
    assert record["inference-1"]["generation"] == 3
    assert record["inference-1"]["create_time"] == psutil.Process(replica.pid).create_time()
    log = (tmp_path / "state" / "logs" / "inference-1.log").read_text()
    assert f"--port {base_port} --release v1" in log


def test_replica_gets_release_in_environment_and_extra_args(
    make_backend: Callable[..., ProcessBackend], marker: str
) -> None:
    backend = make_backend()
    spec = ReleaseSpec(
        tag="v7", model="/models/x", task="embed", args=("--label", "x"), env={MARKER: marker}
    )
    replica = backend.start_replica("inference-1", spec, 0)

    assert replica.pid is not None
    proc = psutil.Process(replica.pid)
    assert proc.environ()["WARDEN_RELEASE"] == "v7"
    assert proc.cmdline()[2:] == [
        "--host",
        "127.0.0.1",
        "--port",
        replica.url.rsplit(":", 1)[1],
        "--release",
        "v7",
        "--model",
        "/models/x",
        "--task",
        "embed",
        "--label",
        "x",
    ]


def test_kill_9_is_an_exit_event_delivered_to_callbacks_at_once(
    make_backend: Callable[..., ProcessBackend], release: ReleaseSpec
) -> None:
    backend = make_backend()
    events = Events()
    backend.on_event(events)
    replica = backend.start_replica("inference-1", release, 0)
    assert replica.pid is not None

    os.kill(replica.pid, signal.SIGKILL)

    assert events.arrived.wait(5.0)
    (event,) = events.received
    assert (event.replica_id, event.kind, event.exit_code) == ("inference-1", "exit", -9)
    assert event.detail == f"pid {replica.pid} killed by SIGKILL"
    assert backend.drain_events() == [event]
    assert backend.drain_events() == []
    (after,) = backend.list_replicas()
    assert (after.state, after.exit_code, after.pid) == (ReplicaState.EXITED, -9, None)


def test_sigstop_is_paused_and_health_probe_fails_within_timeout(
    make_backend: Callable[..., ProcessBackend], release: ReleaseSpec, client: httpx.Client
) -> None:
    backend = make_backend()
    replica = backend.start_replica("inference-1", release, 0)
    assert replica.pid is not None
    wait_until(lambda: healthy(client, replica.url))

    os.kill(replica.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: state_of(backend) is ReplicaState.PAUSED)
        started = time.monotonic()
        result = probe_health(client, replica.url, 0.5)
        elapsed = time.monotonic() - started
    finally:
        os.kill(replica.pid, signal.SIGCONT)

    assert result.ok is False
    assert result.reason == "timeout after 0.5 s (waiting for the response)"
    assert elapsed < 0.5 + 0.3
    wait_until(lambda: state_of(backend) is ReplicaState.RUNNING)


def test_restart_keeps_port_and_starts_a_new_process_without_exit_event(
    make_backend: Callable[..., ProcessBackend], release: ReleaseSpec, client: httpx.Client
) -> None:
    backend = make_backend()
    events = Events()
    backend.on_event(events)
    first = backend.start_replica("inference-1", release, 2)
    assert first.pid is not None

    backend.restart_replica("inference-1")

    (second,) = backend.list_replicas()
    assert second.state is ReplicaState.RUNNING
    assert (second.url, second.generation, second.release) == (first.url, 2, "v1")
    assert second.pid not in (None, first.pid)
    assert not psutil.pid_exists(first.pid)
    wait_until(lambda: healthy(client, second.url))
    assert events.received == []
    assert backend.drain_events() == []


def test_restart_of_a_paused_replica_works(
    make_backend: Callable[..., ProcessBackend], release: ReleaseSpec
) -> None:
    backend = make_backend(grace_s=5.0)
    first = backend.start_replica("inference-1", release, 0)
    assert first.pid is not None
    os.kill(first.pid, signal.SIGSTOP)

    started = time.monotonic()
    backend.restart_replica("inference-1")

    assert time.monotonic() - started < 5.0  # SIGCONT let it act on SIGTERM: no grace wait
    assert state_of(backend) is ReplicaState.RUNNING


def test_stop_replica_is_stopped_on_purpose_without_exit_event(
    make_backend: Callable[..., ProcessBackend], release: ReleaseSpec
) -> None:
    backend = make_backend()
    events = Events()
    backend.on_event(events)
    replica = backend.start_replica("inference-1", release, 0)
    assert replica.pid is not None

    backend.stop_replica("inference-1")

    (after,) = backend.list_replicas()
    assert (after.state, after.pid) == (ReplicaState.STOPPED, None)
    assert not psutil.pid_exists(replica.pid)
    assert events.received == []
    assert backend.drain_events() == []
    backend.stop_replica("inference-1")  # again: nothing to do, no error
    backend.stop_replica("inference-9")  # never existed: no error


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(
    make_backend: Callable[..., ProcessBackend], marker: str, tmp_path: Path
) -> None:
    backend = make_backend(grace_s=0.3)
    stubborn = ReleaseSpec(tag="v1", args=("--ignore-term",), env={MARKER: marker})
    replica = backend.start_replica("inference-1", stubborn, 0)
    assert replica.pid is not None
    proc = psutil.Process(replica.pid)
    wait_until(lambda: "listening" in _log(tmp_path, replica.id))

    backend.stop_replica("inference-1")

    assert not proc.is_running()
    assert state_of(backend) is ReplicaState.STOPPED


def _log(tmp_path: Path, slot: str) -> str:
    return (tmp_path / "state" / "logs" / f"{slot}.log").read_text()


def test_further_slots_take_the_next_free_ports_and_keep_them(
    make_backend: Callable[..., ProcessBackend], release: ReleaseSpec, base_port: int
) -> None:
    backend = make_backend()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base_port + 1))
        squatter.listen()
        second = backend.start_replica("inference-2", release, 0)
    first = backend.start_replica("inference-1", release, 0)
    third = backend.start_replica("inference-3", release, 0)
    backend.restart_replica("inference-2")

    assert first.url.endswith(f":{base_port}")
    assert second.url.endswith(f":{base_port + 2}")
    assert third.url.endswith(f":{base_port + 1}")  # free again once the squatter left
    assert [r.id for r in backend.list_replicas()] == ["inference-1", "inference-2", "inference-3"]
    assert backend.list_replicas()[1].url == second.url


def test_resources_of_a_running_replica(
    make_backend: Callable[..., ProcessBackend], release: ReleaseSpec
) -> None:
    backend = make_backend()
    replica = backend.start_replica("inference-1", release, 0)

    sample = backend.resources(replica)

    assert sample is not None
    assert sample.memory_bytes > 1_000_000
    assert 0 < sample.memory_percent < 100
    assert sample.cpu_percent >= 0


def orphan_replica(state_dir: Path, base_port: int, marker: str) -> int:
    """Start a replica from a separate agent process, then kill -9 that agent; return the pid."""
    agent = _start_agent_process(state_dir, base_port, marker)
    try:
        line = agent.stdout.readline() if agent.stdout else ""
    finally:
        agent.kill()  # kill -9: no atexit, no close(); the replica must survive
        agent.wait()
    return int(line)


def test_new_backend_adopts_replica_left_by_a_killed_agent_and_sees_it_die(
    make_backend: Callable[..., ProcessBackend],
    tmp_path: Path,
    base_port: int,
    marker: str,
    client: httpx.Client,
) -> None:
    pid = orphan_replica(tmp_path / "state", base_port, marker)
    url = f"http://127.0.0.1:{base_port}"
    wait_until(lambda: healthy(client, url))

    backend = make_backend()
    events = Events()
    backend.on_event(events)
    (adopted,) = backend.list_replicas()
    assert (adopted.id, adopted.state, adopted.pid, adopted.url) == (
        "inference-1",
        ReplicaState.RUNNING,
        pid,
        url,
    )
    assert backend.drain_events() == []

    os.kill(pid, signal.SIGKILL)

    assert events.arrived.wait(5.0)
    (event,) = events.received
    assert (event.kind, event.exit_code) == ("exit", None)
    assert event.detail == f"pid {pid} exited (exit code unknown: not a child of this agent)"
    assert state_of(backend) is ReplicaState.EXITED


def test_adopted_replica_restarts_on_its_port_and_close_stops_it(
    make_backend: Callable[..., ProcessBackend],
    tmp_path: Path,
    base_port: int,
    marker: str,
    client: httpx.Client,
) -> None:
    pid = orphan_replica(tmp_path / "state", base_port, marker)
    backend = make_backend()
    events = Events()
    backend.on_event(events)

    backend.restart_replica("inference-1")

    (replica,) = backend.list_replicas()
    assert replica.state is ReplicaState.RUNNING
    assert replica.pid not in (None, pid)
    assert replica.url == f"http://127.0.0.1:{base_port}"
    assert replica.release == "v1"
    wait_until(lambda: not psutil.pid_exists(pid) or _zombie(pid))
    wait_until(lambda: healthy(client, replica.url))
    assert events.received == []

    backend.close()

    assert replica.pid is not None
    assert not psutil.pid_exists(replica.pid)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_replica_stopped_on_purpose_stays_stopped_for_the_next_agent(
    make_backend: Callable[..., ProcessBackend], release: ReleaseSpec
) -> None:
    first = make_backend(stop_on_close=False)
    first.start_replica("inference-1", release, 0)
    first.start_replica("inference-2", release, 0)
    first.stop_replica("inference-2")
    first.close()

    second = make_backend()

    assert [(r.id, r.state) for r in second.list_replicas()] == [
        ("inference-1", ReplicaState.RUNNING),
        ("inference-2", ReplicaState.STOPPED),
    ]
    assert second.drain_events() == []


def test_a_start_recorded_by_an_agent_that_died_before_spawning_is_missing_for_the_next(
    make_backend: Callable[..., ProcessBackend],
    release: ReleaseSpec,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The slot's new generation is written before the spawn; an agent killed in between
    leaves a slot whose process never ran. The next agent must see it MISSING (the reconciler
    starts it), not EXITED at the desired generation (which nothing would ever restart)."""
    first = make_backend(stop_on_close=False)
    first.start_replica("inference-1", release, 0)

    def dies(*_: object) -> None:
        raise KeyboardInterrupt("the agent is killed here")

    monkeypatch.setattr(first, "_spawn", dies)
    with pytest.raises(KeyboardInterrupt):
        first.start_replica("inference-1", release, 1)  # a restart: generation 0 -> 1

    second = make_backend()
    (replica,) = second.list_replicas()
    assert (replica.state, replica.generation, replica.pid) == (ReplicaState.MISSING, 1, None)
    assert second.drain_events() == []


def test_command_that_cannot_start_is_a_backend_error(
    make_backend: Callable[..., ProcessBackend], release: ReleaseSpec, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-server")
    backend = make_backend(command=[missing])

    with pytest.raises(BackendError) as error:
        backend.start_replica("inference-1", release, 0)

    assert str(error.value) == (
        f"cannot start replica inference-1: {missing}: [Errno 2] No such file or directory: "
        f"'{missing}' (check the backend command in warden.yaml)"
    )
    (replica,) = backend.list_replicas()
    assert (replica.state, replica.pid) == (ReplicaState.EXITED, None)


def _start_agent_process(state_dir: Path, base_port: int, marker: str) -> subprocess.Popen[str]:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from agent.backends.base import ReleaseSpec
        from agent.backends.process import ProcessBackend
        backend = ProcessBackend(
            state_dir=Path({str(state_dir)!r}), base_port={base_port},
            command=[sys.executable, {FAKE_SERVER!r}],
        )
        release = ReleaseSpec(tag="v1", env={{{MARKER!r}: {marker!r}}})
        print(backend.start_replica("inference-1", release, 0).pid, flush=True)
        sys.stdin.read()
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, MARKER: marker},
    )


def test_adoption_rejects_a_reused_pid(
    make_backend: Callable[..., ProcessBackend], tmp_path: Path, base_port: int
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    me = psutil.Process()
    record = {
        "status": "live",
        "port": base_port,
        "pid": me.pid,  # alive, but not the process that was recorded
        "create_time": me.create_time() - 100.0,
        "started_at": 1.0,
        "generation": 0,
        "release": {"tag": "v1", "model": "", "task": "", "image": "", "args": [], "env": {}},
    }
    document = {"version": 1, "service": "inference", "replicas": {"inference-1": record}}
    (state_dir / "replicas.json").write_text(json.dumps(document))

    backend = make_backend()

    (replica,) = backend.list_replicas()
    assert (replica.state, replica.pid) == (ReplicaState.EXITED, None)
    (event,) = backend.drain_events()
    assert event.detail == f"pid {me.pid} was gone when the agent started (exit code unknown)"
    backend.close()  # must not signal the test process
    assert me.is_running()


def test_close_stops_every_child_and_next_agent_does_not_report_them(
    make_backend: Callable[..., ProcessBackend], release: ReleaseSpec, marker: str
) -> None:
    backend = make_backend()
    events = Events()
    backend.on_event(events)
    pids = {backend.start_replica(f"inference-{i}", release, 0).pid for i in (1, 2)}

    backend.close()

    children = psutil.Process().children(recursive=True)
    assert [c for c in children if c.pid in pids] == []
    assert not any(_has_marker(c, marker) for c in children)
    assert events.received == []
    assert make_backend().list_replicas() == []


def _has_marker(proc: psutil.Process, marker: str) -> bool:
    try:
        return proc.environ().get(MARKER) == marker
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def test_a_replica_started_but_never_recorded_is_stopped_before_its_slot_starts_again(
    make_backend: Callable[..., ProcessBackend], release: ReleaseSpec, tmp_path: Path
) -> None:
    """An agent killed between starting a replica and recording it: the orphan serves on the
    slot's port, so a new process there would die with "address already in use"."""
    first = make_backend(stop_on_close=False)
    orphan = first.start_replica("inference-1", release, 0)
    with httpx.Client() as http:
        wait_until(lambda: healthy(http, orphan.url), timeout_s=20)
    state = tmp_path / "state" / "replicas.json"
    doc = json.loads(state.read_text())
    entry = doc["replicas"]["inference-1"]
    entry.update(status="lost", pid=None, create_time=None, started_at=None)  # kill -9 mid-start
    state.write_text(json.dumps(doc))
    again = make_backend()
    assert state_of(again) is ReplicaState.MISSING
    started = again.start_replica("inference-1", release, 0)
    assert started.pid != orphan.pid
    assert not psutil.pid_exists(orphan.pid) or psutil.Process(orphan.pid).status() == "zombie"
    with httpx.Client() as http:
        wait_until(lambda: healthy(http, started.url), timeout_s=20)
    assert state_of(again) is ReplicaState.RUNNING
