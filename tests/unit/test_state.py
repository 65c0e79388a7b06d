"""The SQLite state store: roundtrips, atomic intent + desired state, durability across reopen."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from agent.backends.base import ReleaseSpec
from agent.clock import FakeClock
from agent.domain import ActionKind, Firing
from agent.errors import StateError
from agent.policy import Context, PolicyConfig, PolicyState, decide
from agent.releases import ReleaseStatus, choose_revert_target
from agent.state import ActionStatus, DesiredState, StateStore

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path)


def spec(tag: str) -> ReleaseSpec:
    return ReleaseSpec(
        tag=tag, image=f"warden-inference:{tag}", args=("--threads", "2"), env={"A": "1"}
    )


def test_database_is_wal_with_full_sync_and_versioned(store: StateStore, tmp_path: Path) -> None:
    assert store.path == tmp_path / "warden.db"
    assert store.pragma("journal_mode") == "wal"
    assert store.pragma("synchronous") == "2"  # FULL
    assert store.schema_version() == 1
    store.close()
    assert StateStore(tmp_path).schema_version() == 1  # reopening does not migrate twice


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    StateStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "warden.db")
    db.execute("INSERT INTO schema_migrations (version) VALUES (7)")
    db.commit()
    db.close()
    with pytest.raises(StateError) as err:
        StateStore(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'warden.db'}: schema version 7 is newer than this agent knows (1); "
        "upgrade warden or point state_dir elsewhere"
    )


# releases --------------------------------------------------------------------------------------


def test_releases_roundtrip_newest_first_and_last_good(store: StateStore) -> None:
    store.add_release(spec("v1"), T0)
    store.add_release(spec("v2"), T0 + 10)
    store.add_release(spec("v3"), T0 + 20)
    store.mark_good("v1", T0 + 5, "baked 300 s")
    store.mark_good("v2", T0 + 15, "baked 300 s")
    bad = store.mark_bad("v2", T0 + 30, "reverted: canaries failed")
    assert (bad.status, bad.promoted_at, bad.marked_bad_at, bad.reason) == (
        ReleaseStatus.BAD,
        T0 + 15,
        T0 + 30,
        "reverted: canaries failed",
    )
    releases = store.releases()
    assert [(r.tag, r.status) for r in releases] == [
        ("v3", ReleaseStatus.CANDIDATE),
        ("v2", ReleaseStatus.BAD),
        ("v1", ReleaseStatus.GOOD),
    ]
    assert releases[0].spec == spec("v3")
    last = store.last_good()
    assert last is not None and last.tag == "v1"
    assert choose_revert_target(releases, current="v3") == "v1"


def test_adding_a_release_twice_is_idempotent_but_a_changed_spec_is_refused(
    store: StateStore,
) -> None:
    first = store.add_release(spec("v1"), T0)
    assert store.add_release(spec("v1"), T0 + 99) == first
    with pytest.raises(StateError) as err:
        store.add_release(ReleaseSpec(tag="v1", image="other"), T0)
    assert (
        str(err.value)
        == "release v1 already exists with a different spec; use a new tag for a new build"
    )


def test_marking_an_unknown_release_says_so(store: StateStore) -> None:
    with pytest.raises(StateError) as err:
        store.mark_good("nope", T0, "x")
    assert str(err.value) == "release nope is unknown; `warden releases` lists the known ones"
    assert store.last_good() is None


# desired state ---------------------------------------------------------------------------------


def test_desired_state_roundtrip_and_compare_and_set(store: StateStore) -> None:
    assert store.desired() is None
    first = store.set_desired(
        DesiredState(release="v1", replicas=2, generations={"inference-1": 3}), now=T0
    )
    assert first == DesiredState(
        release="v1", replicas=2, generations={"inference-1": 3}, updated_at=T0, version=1
    )
    assert store.desired() == first
    second = store.set_desired(replace(first, frozen=True, maintenance=True), now=T0 + 1)
    assert (second.version, second.frozen, second.maintenance) == (2, True, True)
    with pytest.raises(StateError) as err:
        store.set_desired(replace(first, replicas=5), now=T0 + 2)  # stale: read at version 1
    assert str(err.value) == (
        "desired state changed meanwhile: stored version 2, expected 1; read it again and retry"
    )
    assert store.desired() == second


# actions ---------------------------------------------------------------------------------------


def test_begin_action_with_desired_writes_both_in_one_transaction(store: StateStore) -> None:
    desired = store.set_desired(DesiredState(release="v1", replicas=1), now=T0)
    action, new = store.begin_action_with_desired(
        rule="health-failures",
        subject="inference-1",
        kind=ActionKind.RESTART,
        target="inference-1",
        reason="restart inference-1: health failed 3 times",
        desired=replace(desired, generations={"inference-1": 1}),
        now=T0 + 1,
    )
    assert (action.status, action.at, action.kind, len(action.id)) == (
        ActionStatus.PENDING,
        T0 + 1,
        ActionKind.RESTART,
        32,
    )
    assert new.generations == {"inference-1": 1} and new.version == 2
    assert store.pending_actions() == [action]


def test_failed_desired_change_leaves_no_intent_behind(store: StateStore) -> None:
    store.set_desired(DesiredState(release="v1", replicas=1), now=T0)
    with pytest.raises(StateError):
        store.begin_action_with_desired(
            rule="r",
            subject="s",
            kind=ActionKind.SCALE,
            target="2",
            reason="x",
            desired=DesiredState(release="v1", replicas=2, version=0),  # stale version
            now=T0 + 1,
        )
    assert store.actions() == []
    assert store.desired() == DesiredState(release="v1", replicas=1, updated_at=T0, version=1)


def test_transaction_rolls_back_everything_on_error(store: StateStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.record_event(at=T0, kind="k", subject="s", message="m")
        store.begin_action(
            rule="r", subject="s", kind=ActionKind.RESTART, target="s", reason="x", now=T0
        )
        raise RuntimeError("boom")
    assert store.events() == [] and store.actions() == []


def test_pending_actions_are_visible_after_reopening(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    a = store.begin_action(
        rule="r",
        subject="inference-1",
        kind=ActionKind.RESTART,
        target="inference-1",
        reason="x",
        now=T0,
    )
    b = store.begin_action(
        rule="r", subject="service", kind=ActionKind.SCALE, target="2", reason="y", now=T0 + 1
    )
    c = store.begin_action(
        rule="r", subject="service", kind=ActionKind.ROLLBACK, target="v1", reason="z", now=T0 + 2
    )
    store.mark_action_applied(b.id, T0 + 3)
    store.finish_action(c.id, ActionStatus.VERIFIED, "ready after 4 s", T0 + 6)
    store.close()  # as good as a kill -9: every commit is already on disk

    reopened = StateStore(tmp_path)
    pending = reopened.pending_actions()
    assert [(p.id, p.status, p.started_at) for p in pending] == [
        (a.id, ActionStatus.PENDING, None),
        (b.id, ActionStatus.APPLIED, T0 + 3),
    ]
    done = reopened.action(c.id)
    assert done is not None
    assert (done.status, done.finished_at, done.result) == (
        ActionStatus.VERIFIED,
        T0 + 6,
        "ready after 4 s",
    )


def test_finishing_is_idempotent_but_a_final_action_cannot_change(store: StateStore) -> None:
    a = store.begin_action(
        rule="r", subject="s", kind=ActionKind.RESTART, target="s", reason="x", now=T0
    )
    first = store.finish_action(a.id, ActionStatus.FAILED, "not ready after 60 s", T0 + 60)
    assert store.finish_action(a.id, ActionStatus.FAILED, "again", T0 + 99) == first
    with pytest.raises(StateError) as err:
        store.finish_action(a.id, ActionStatus.VERIFIED, "", T0 + 100)
    assert str(err.value) == f"action {a.id} is failed; it cannot become verified"
    with pytest.raises(StateError) as unknown:
        store.finish_action("nope", ActionStatus.VERIFIED, "", T0)
    assert str(unknown.value) == "action nope is unknown"


def test_action_history_newest_first_with_limit_and_since(store: StateStore) -> None:
    ids = [
        store.begin_action(
            rule="r", subject="s", kind=ActionKind.RESTART, target="s", reason=str(i), now=T0 + i
        ).id
        for i in range(5)
    ]
    assert [a.id for a in store.actions(limit=2)] == [ids[4], ids[3]]
    assert [a.id for a in store.actions(since=T0 + 3)] == [ids[4], ids[3]]
    assert len(store.actions()) == 5


# policy and rule state -------------------------------------------------------------------------


def test_policy_state_and_rule_pending_roundtrip(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.load_policy_state() == PolicyState()
    assert store.load_rule_pending() == {}
    firing = Firing(
        rule="health-failures",
        subject="inference-1",
        severity="critical",
        value=3.0,
        since=T0,
        reason="health failed 3 times in a row >= 3 for 3 s (rule health-failures)",
        actions=(ActionKind.ALERT, ActionKind.RESTART),
    )
    _, state = decide(
        firing=(firing,),
        state=PolicyState(),
        config=PolicyConfig(),
        context=Context(now=T0, replicas=1, current_release="v1"),
    )
    assert state != PolicyState()
    store.save_policy_state(state)
    store.save_rule_pending({"health-failures/inference-1": {"since": T0, "firing": True}})
    store.close()
    reopened = StateStore(tmp_path)
    assert reopened.load_policy_state() == state
    assert reopened.load_rule_pending() == {
        "health-failures/inference-1": {"since": T0, "firing": True}
    }


# alert outbox ----------------------------------------------------------------------------------


def test_outbox_survives_reopen_and_retries_until_sent(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = StateStore(tmp_path)
    store.enqueue_alert(
        "am", {"name": "health-failures", "status": "firing"}, "k1", now=clock.now()
    )
    store.enqueue_alert("am", {"name": "duplicate"}, "k1", now=clock.now())  # same key: ignored
    store.enqueue_alert("slack", {"name": "health-failures"}, "k1", now=clock.now())
    store.close()

    store = StateStore(tmp_path)
    due = store.due_alerts(clock.now())
    assert [(a.receiver, dict(a.payload), a.attempts) for a in due] == [
        ("am", {"name": "health-failures", "status": "firing"}, 0),
        ("slack", {"name": "health-failures"}, 0),
    ]
    store.mark_alert_failed(due[0].id, clock.now() + 2, "HTTP 503 from http://am")
    store.mark_alert_sent(due[1].id, clock.now())
    assert store.due_alerts(clock.now()) == []
    assert store.unsent_alerts() == 1
    store.close()

    clock.advance(2)
    store = StateStore(tmp_path)
    again = store.due_alerts(clock.now())
    assert [(a.id, a.attempts, a.last_error) for a in again] == [
        (due[0].id, 1, "HTTP 503 from http://am")
    ]


def test_alert_enqueued_without_a_time_is_due_at_once(store: StateStore) -> None:
    store.enqueue_alert("am", {"x": 1}, "k")
    assert len(store.due_alerts(T0)) == 1
    assert store.due_alerts(T0, limit=0) == []


# events ----------------------------------------------------------------------------------------


def test_events_are_paged_by_id(store: StateStore) -> None:
    ids = [
        store.record_event(
            at=T0 + i, kind="decision", subject="inference-1", message=f"m{i}", data={"i": i}
        )
        for i in range(3)
    ]
    assert ids == sorted(ids)
    page = store.events(after_id=ids[0], limit=1)
    assert [(e.id, e.message, dict(e.data)) for e in page] == [(ids[1], "m1", {"i": 1})]
    assert [e.id for e in store.events(after_id=ids[2])] == []


# concurrency -----------------------------------------------------------------------------------


def _hammer(store: StateStore, name: str, count: int, errors: list[BaseException]) -> None:
    try:
        for i in range(count):
            with store.transaction():
                store.record_event(at=T0 + i, kind="k", subject=name, message=str(i))
                store.begin_action(
                    rule="r",
                    subject=name,
                    kind=ActionKind.RESTART,
                    target=name,
                    reason="x",
                    now=T0 + i,
                )
    except BaseException as exc:  # collected and re-raised by the test
        errors.append(exc)


def test_two_threads_share_one_store(store: StateStore) -> None:
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_hammer, args=(store, f"t{n}", 100, errors)) for n in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.events(limit=1000)) == 200
    assert len(store.actions(limit=1000)) == 200


def test_two_stores_on_one_file_from_two_threads(tmp_path: Path) -> None:
    stores = [StateStore(tmp_path), StateStore(tmp_path)]
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_hammer, args=(s, f"t{n}", 50, errors))
        for n, s in enumerate(stores)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    subjects = sorted(e.subject for e in stores[0].events(limit=1000))
    assert subjects == ["t0"] * 50 + ["t1"] * 50
