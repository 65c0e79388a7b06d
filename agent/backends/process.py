"""The embedded process backend: replicas are child processes of the agent on loopback ports.

Slot ``<service>-1`` listens on the base port, further slots on the next free ports; a slot keeps
its port for good (recorded in ``state_dir/replicas.json``). A watcher thread per replica blocks on
the process's exit, so a crash is an ``exit`` event at once, not at the next poll.

Crash safety: replicas are *not* killed when the agent dies (no ``PR_SET_PDEATHSIG``): the service
keeps serving while a killed agent restarts, and the new agent adopts the replicas recorded in
``replicas.json`` (pid plus create time, so a reused pid is never mistaken for a replica) and
watches them through a pidfd. Children stay in the agent's process group
(``start_new_session=False``), so Ctrl-C in a terminal reaches them too, and ``close()`` (also run
at exit) stops them when the backend owns them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from agent.backends.base import EventInbox, ReleaseSpec, ResourceSample
from agent.clock import Clock, SystemClock
from agent.collectors import ProcessSampler
from agent.domain import EngineEvent, Replica, ReplicaState
from agent.errors import BackendError, StateError

logger = logging.getLogger(__name__)

DEFAULT_GRACE_S = 10.0
_KILL_WAIT_S = 5.0  # after SIGKILL the kernel needs moments, not seconds; more means D state
_PAUSED = {psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP}

# What a slot is doing, as recorded: "live" has a process; "stopped" was stopped on purpose;
# "lost" should run but has no process (died while the agent was down, or failed to start);
# "closed" was shut down with the agent: it only keeps its port and is not reported.
_LIVE, _STOPPED, _LOST, _CLOSED = "live", "stopped", "lost", "closed"


@dataclass(slots=True, kw_only=True)
class _Proc:
    """One incarnation of a replica process (each restart makes a new one)."""

    pid: int
    create_time: float
    handle: psutil.Process
    popen: subprocess.Popen[bytes] | None  # None when adopted from an earlier agent
    pidfd: int | None  # signals go through it, so a reused pid is never signalled
    exited: threading.Event = field(default_factory=threading.Event)
    exit_code: int | None = None
    planned: bool = False  # stopped by us: its exit is not an event


@dataclass(slots=True, kw_only=True)
class _Slot:
    name: str
    port: int
    release: ReleaseSpec
    generation: int
    status: str
    started_at: float | None = None
    proc: _Proc | None = None


class ProcessBackend:
    """Replicas as local child processes running the server command (see module docstring)."""

    kind = "process"

    def __init__(
        self,
        *,
        state_dir: Path,
        service: str = "inference",
        base_port: int = 8000,
        host: str = "127.0.0.1",
        command: Sequence[str] | None = None,
        clock: Clock | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        stop_on_close: bool = True,
    ) -> None:
        self._service = service
        self._base_port = base_port
        self._host = host
        self._command = list(command) if command else [sys.executable, "-m", "inference"]
        self._clock: Clock = clock or SystemClock()
        self._grace_s = grace_s
        self._stop_on_close = stop_on_close
        self._state_path = state_dir / "replicas.json"
        self._log_dir = state_dir / "logs"
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # guards slots, events, callbacks
        self._ops = threading.RLock()  # one start/stop/restart at a time
        self._slots: dict[str, _Slot] = {}
        self._inbox = EventInbox()
        self._sampler = ProcessSampler()
        self._wake_r, self._wake_w = os.pipe()  # wakes pidfd watchers on close()
        self._watchers: list[threading.Thread] = []
        self._closed = False
        self._load()
        if stop_on_close:
            atexit.register(self.close)

    # --- Backend protocol ---------------------------------------------------------------------

    def list_replicas(self) -> list[Replica]:
        """Every slot except those shut down with an earlier agent, ordered by slot number."""
        with self._lock:
            slots = [s for s in self._slots.values() if s.status != _CLOSED]
        return [self._replica(s) for s in sorted(slots, key=_slot_order)]

    def start_replica(self, slot: str, release: ReleaseSpec, generation: int) -> Replica:
        """Start ``slot`` running ``release`` on its port, stopping a process already there."""
        with self._ops:
            return self._replace(slot, release, generation)

    def stop_replica(self, slot: str) -> None:
        """Stop ``slot`` on purpose: it is reported STOPPED and its exit is not an event."""
        with self._ops:
            with self._lock:
                record = self._slots.get(slot)
                if record is None:
                    return
                record.status = _STOPPED
                self._save()
            if record.proc is not None:
                self._terminate([record.proc])
                self._sampler.forget(record.proc.pid)

    def restart_replica(self, slot: str) -> None:
        """Stop ``slot`` (SIGTERM, SIGKILL after the grace period) and start it on the same port."""
        with self._ops:
            with self._lock:
                record = self._slots.get(slot)
            if record is None:
                raise BackendError(f"cannot restart replica {slot}: no such replica")
            self._replace(slot, record.release, record.generation)

    def resources(self, replica: Replica) -> ResourceSample | None:
        """CPU and memory of the replica's process and its children (psutil)."""
        return None if replica.pid is None else self._sampler.sample(replica.pid)

    def drain_events(self) -> list[EngineEvent]:
        """Exit events since the last call."""
        return self._inbox.drain()

    def on_event(self, callback: Callable[[EngineEvent], None]) -> None:
        """Call ``callback`` from the watcher thread as soon as a replica exits on its own."""
        self._inbox.subscribe(callback)

    def close(self) -> None:
        """Stop every replica when the backend owns them (``stop_on_close``), then the watchers.

        Stopped-at-close slots keep their ports but are not reported by the next agent, so its
        reconciler starts them afresh instead of seeing crashes.
        """
        with self._ops:
            if self._closed:
                return
            atexit.unregister(self.close)
            if self._stop_on_close:
                with self._lock:
                    live = [s for s in self._slots.values() if s.status == _LIVE]
                    for record in live:
                        record.status = _CLOSED
                    self._save()
                try:
                    self._terminate([s.proc for s in live if s.proc is not None])
                except BackendError as exc:  # finish closing; the message says what to do
                    logger.error("%s", exc)
            self._closed = True
            os.write(self._wake_w, b"x")  # never read: every pidfd watcher sees it and returns
            for watcher in self._watchers:
                watcher.join(timeout=1.0)
            os.close(self._wake_w)
            os.close(self._wake_r)

    # --- starting and stopping -------------------------------------------------------------

    def _replace(self, slot: str, release: ReleaseSpec, generation: int) -> Replica:
        with self._lock:
            record = self._slots.get(slot)
        if record is not None and record.proc is not None:
            self._terminate([record.proc])
            self._sampler.forget(record.proc.pid)
        if record is not None and (
            record.proc is None or not _port_is_free(self._host, record.port)
        ):
            self._stop_orphans(record.port)  # a process no record knows may hold (or bind) it
        with self._lock:
            port = record.port if record is not None else self._new_port(slot)
            record = _Slot(
                name=slot, port=port, release=release, generation=generation, status=_LOST
            )
            self._slots[slot] = record
            self._save()
        try:
            proc = self._spawn(record)
        except BackendError:
            with self._lock:  # tried and failed: EXITED (the rules' business), not MISSING
                record.started_at = self._clock.now()
                self._save()
            raise
        with self._lock:
            record.proc, record.status, record.started_at = proc, _LIVE, self._clock.now()
            self._save()
        self._watch(record, proc)
        return self._replica(record)

    def _spawn(self, record: _Slot) -> _Proc:
        release = record.release
        argv = [*self._command, "--host", self._host, "--port", str(record.port)]
        argv += ["--release", release.tag]
        argv += ["--model", release.model] if release.model else []
        argv += ["--task", release.task] if release.task else []
        argv += list(release.args)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "WARDEN_RELEASE": release.tag, **release.env}
        log_path = self._log_dir / f"{record.name}.log"
        stamp = datetime.fromtimestamp(self._clock.now(), UTC).isoformat(timespec="seconds")
        with log_path.open("ab") as log:
            log.write(f"--- {stamp} warden starts: {' '.join(argv)}\n".encode())
            log.flush()
            try:
                popen = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
                )
            except OSError as exc:
                raise BackendError(
                    f"cannot start replica {record.name}: {argv[0]}: {exc} "
                    "(check the backend command in warden.yaml)"
                ) from exc
        handle = psutil.Process(popen.pid)  # not reaped yet, so this is our child even if dead
        return _Proc(
            pid=popen.pid,
            create_time=handle.create_time(),
            handle=handle,
            popen=popen,
            pidfd=os.pidfd_open(popen.pid),
        )

    def _stop_orphans(self, port: int) -> None:
        """Stop our server command still listening on a slot's ``port`` that no record knows.

        An agent killed between starting a replica and recording it leaves that process serving
        on the slot's port; a second one started there dies with "address already in use" and
        the slot looks crashed for good. The orphan is ours (same command, same --port): stop it
        (SIGTERM, SIGKILL after the grace period) before starting the slot again.
        """
        wanted = ["--port", str(port)]
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            ours = cmdline[: len(self._command)] == self._command
            if not ours or not _has_pair(cmdline, wanted) or proc.pid == os.getpid():
                continue
            logger.warning("stopping an unrecorded replica on port %d (pid %d)", port, proc.pid)
            with contextlib.suppress(psutil.Error):
                proc.terminate()
                try:
                    proc.wait(timeout=self._grace_s)
                except psutil.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)

    def _terminate(self, procs: Iterable[_Proc]) -> None:
        """SIGTERM (and SIGCONT, so a paused process can act on it), then SIGKILL after grace."""
        procs = list(procs)
        with self._lock:
            for proc in procs:
                proc.planned = True
        for proc in procs:
            self._signal(proc, signal.SIGTERM)
            self._signal(proc, signal.SIGCONT)
        deadline = self._clock.monotonic() + self._grace_s
        for proc in procs:
            if not proc.exited.wait(max(0.0, deadline - self._clock.monotonic())):
                logger.warning("pid %d ignored SIGTERM for %g s: SIGKILL", proc.pid, self._grace_s)
                self._signal(proc, signal.SIGKILL)
        for proc in procs:
            if not proc.exited.wait(_KILL_WAIT_S):
                raise BackendError(
                    f"pid {proc.pid} still runs {_KILL_WAIT_S:g} s after SIGKILL "
                    "(uninterruptible I/O?): check it with ps and stop it by hand"
                )

    def _signal(self, proc: _Proc, sig: signal.Signals) -> None:
        with self._lock:  # the watcher closes the pidfd under this lock when the process exits
            if proc.pidfd is None:
                return
            with contextlib.suppress(ProcessLookupError):  # exited, not yet seen by the watcher
                signal.pidfd_send_signal(proc.pidfd, sig)

    # --- watching exits ------------------------------------------------------------------------

    def _watch(self, record: _Slot, proc: _Proc) -> None:
        target = self._wait_child if proc.popen is not None else self._wait_pidfd
        thread = threading.Thread(
            target=target, args=(record, proc), name=f"warden-watch-{record.name}", daemon=True
        )
        thread.start()
        if proc.popen is None:
            self._watchers.append(thread)

    def _wait_child(self, record: _Slot, proc: _Proc) -> None:
        assert proc.popen is not None
        self._exited(record, proc, proc.popen.wait())

    def _wait_pidfd(self, record: _Slot, proc: _Proc) -> None:
        """An adopted process is not our child: its pidfd becomes readable when it exits."""
        assert proc.pidfd is not None
        ready, _, _ = select.select([proc.pidfd, self._wake_r], [], [])
        if proc.pidfd in ready:
            self._exited(record, proc, None)  # only a parent can learn the exit code
            return
        with self._lock:  # close() without stopping: the process runs on, unwatched
            os.close(proc.pidfd)
            proc.pidfd = None

    def _exited(self, record: _Slot, proc: _Proc, code: int | None) -> None:
        event = None
        with self._lock:
            proc.exit_code = code
            if proc.pidfd is not None:
                os.close(proc.pidfd)
                proc.pidfd = None
            current = self._slots.get(record.name) is record and record.proc is proc
            if current and not proc.planned and not self._closed:
                event = self._exit_event(
                    record.name, code, f"pid {proc.pid} {_describe_exit(code)}"
                )
        proc.exited.set()
        if event is not None:
            self._inbox.put(event)

    # --- what a slot looks like -------------------------------------------------------------

    def _replica(self, record: _Slot) -> Replica:
        proc = record.proc
        state, pid, exit_code = ReplicaState.EXITED, None, None
        if record.status == _STOPPED:
            state = ReplicaState.STOPPED
        elif record.status == _LOST and record.started_at is None:
            # A start recorded (new generation) by an agent that died before it spawned the
            # process: the slot's process never ran, so the reconciler starts it.
            state = ReplicaState.MISSING
        elif record.status == _LIVE and proc is not None:
            state, exit_code = _process_state(proc)
            pid = proc.pid if state in (ReplicaState.RUNNING, ReplicaState.PAUSED) else None
        return Replica(
            id=record.name,
            url=f"http://{self._host}:{record.port}",
            release=record.release.tag,
            state=state,
            generation=record.generation,
            pid=pid,
            started_at=record.started_at,
            exit_code=exit_code,
        )

    def _new_port(self, slot: str) -> int:
        """Base port for slot ``<service>-1``; else the lowest free port above it, not taken."""
        if slot == f"{self._service}-1":
            return self._base_port
        taken = {s.port for s in self._slots.values()} | {self._base_port}
        for port in range(self._base_port + 1, 65536):
            if port not in taken and _port_is_free(self._host, port):
                return port
        raise BackendError(f"no free port above {self._base_port} on {self._host} for {slot}")

    # --- replicas.json --------------------------------------------------------------------------

    def _save(self) -> None:
        """Write every slot atomically (caller holds the lock)."""
        document = {
            "version": 1,
            "service": self._service,
            "replicas": {name: _record_json(s) for name, s in sorted(self._slots.items())},
        }
        tmp = self._state_path.with_suffix(".json.tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._state_path)

    def _load(self) -> None:
        """Adopt the replicas an earlier agent recorded; report dead ones as EXITED once."""
        if not self._state_path.exists():
            return
        try:
            entries = json.loads(self._state_path.read_text(encoding="utf-8"))["replicas"]
            records = [_record_from_json(name, entry) for name, entry in entries.items()]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"{self._state_path}: unreadable replica records ({exc!r}); stop any replica "
                "processes still running and delete the file"
            ) from exc
        with self._lock:  # adopted watchers start here and may report an exit at once
            for record, recorded in records:
                self._slots[record.name] = record
                if recorded is not None:
                    self._adopt_or_report(record, *recorded)
            self._save()

    def _adopt_or_report(self, record: _Slot, pid: int, create_time: float) -> None:
        record.proc = _adopt(pid, create_time)
        if record.proc is None:
            record.status = _LOST
            detail = f"pid {pid} was gone when the agent started (exit code unknown)"
            self._inbox.put(self._exit_event(record.name, None, detail))
            return
        self._watch(record, record.proc)
        logger.info("adopted replica %s (pid %d, port %d)", record.name, pid, record.port)

    def _exit_event(self, slot: str, code: int | None, detail: str) -> EngineEvent:
        """An exit event, logged; the caller queues it in the inbox."""
        event = EngineEvent(
            at=self._clock.now(), replica_id=slot, kind="exit", exit_code=code, detail=detail
        )
        logger.warning("replica %s %s", slot, detail)
        return event


def _adopt(pid: int, create_time: float) -> _Proc | None:
    """A process an earlier agent started, if that very process still runs (not a reused pid)."""
    try:
        pidfd = os.pidfd_open(pid)  # opened first: the create time checked next is then its own
    except ProcessLookupError:
        return None
    try:
        handle = psutil.Process(pid)
        same = abs(handle.create_time() - create_time) < 0.01
        if same and handle.status() != psutil.STATUS_ZOMBIE:
            return _Proc(pid=pid, create_time=create_time, handle=handle, popen=None, pidfd=pidfd)
    except psutil.Error as exc:  # gone, or not ours to inspect: either way not our replica
        logger.info("not adopting pid %d: %s", pid, exc)
    os.close(pidfd)
    return None


def _process_state(proc: _Proc) -> tuple[ReplicaState, int | None]:
    if proc.exited.is_set():
        return ReplicaState.EXITED, proc.exit_code
    try:
        status = proc.handle.status()
    except psutil.NoSuchProcess:
        return ReplicaState.EXITED, None
    if status == psutil.STATUS_ZOMBIE:  # dead; the watcher is about to record it
        return ReplicaState.EXITED, None
    return (ReplicaState.PAUSED if status in _PAUSED else ReplicaState.RUNNING), None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exited (exit code unknown: not a child of this agent)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _has_pair(argv: Sequence[str], pair: Sequence[str]) -> bool:
    return any(list(argv[i : i + len(pair)]) == list(pair) for i in range(len(argv)))


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Like the server: a port in TIME_WAIT is usable, a listening one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _slot_order(record: _Slot) -> tuple[int, str]:
    number = record.name.rpartition("-")[2]
    return (int(number) if number.isdigit() else sys.maxsize, record.name)


def _record_json(record: _Slot) -> dict[str, Any]:
    proc = record.proc if record.status == _LIVE else None
    release = {**asdict(record.release), "args": list(record.release.args)}
    return {
        "status": record.status,
        "port": record.port,
        "pid": proc.pid if proc else None,
        "create_time": proc.create_time if proc else None,
        "started_at": record.started_at,
        "generation": record.generation,
        "release": {**release, "env": dict(record.release.env)},
    }


def _record_from_json(name: str, entry: dict[str, Any]) -> tuple[_Slot, tuple[int, float] | None]:
    """A slot, plus the recorded (pid, create time) when it was live."""
    release = dict(entry["release"])
    if entry["status"] not in (_LIVE, _STOPPED, _LOST, _CLOSED):
        raise ValueError(f"replica {name}: unknown status {entry['status']!r}")
    record = _Slot(
        name=name,
        port=int(entry["port"]),
        release=ReleaseSpec(**{**release, "args": tuple(release.get("args", ()))}),
        generation=int(entry["generation"]),
        status=str(entry["status"]),
        started_at=entry["started_at"],
    )
    live = record.status == _LIVE
    return record, (int(entry["pid"]), float(entry["create_time"])) if live else None
