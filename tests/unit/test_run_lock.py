"""The Stage 2 run lease: decide() by table, then the birth_run_lock module on a tmp dir."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.birth_stage2_lock import (
    BREAK,
    CREATE,
    FAIL_HELD,
    FAIL_STALE,
    FREE,
    NOOP,
    OURS,
    REFRESH,
    REMOVE,
    UNREADABLE,
    decide,
    epoch,
    fence,
    heartbeat,
    iso,
    new_lease,
    parse_lease,
)

NOW = 1_764_125_000.0  # any fixed instant
MINE, OTHER = "run-mine", "run-other"


def lease(run_id, age):
    return new_lease(run_id, NOW - age, owner="ops@laptop", acquired_at=iso(NOW - 7200))


CASES = [
    # (id, existing, state, break_run_id, action)
    ("free acquire", None, "acquired", None, CREATE),
    ("free release", None, "released", None, NOOP),
    ("free check", None, "checked", None, FREE),
    ("ours acquire", lease(MINE, 10), "acquired", None, REFRESH),
    ("ours stale acquire", lease(MINE, 99999), "acquired", None, REFRESH),
    ("ours release", lease(MINE, 10), "released", None, REMOVE),
    ("ours check", lease(MINE, 10), "checked", None, OURS),
    ("held acquire", lease(OTHER, 10), "acquired", None, FAIL_HELD),
    ("held at the limit", lease(OTHER, 1800), "acquired", None, FAIL_HELD),
    ("stale acquire", lease(OTHER, 1801), "acquired", None, FAIL_STALE),
    ("held check", lease(OTHER, 10), "checked", None, FAIL_HELD),
    ("stale check", lease(OTHER, 5000), "checked", None, FAIL_STALE),
    ("held release leaves it", lease(OTHER, 10), "released", None, NOOP),
    ("break acquire", lease(OTHER, 10), "acquired", OTHER, BREAK),
    ("break stale acquire", lease(OTHER, 5000), "acquired", OTHER, BREAK),
    ("break wrong id", lease(OTHER, 10), "acquired", "run-third", FAIL_HELD),
    ("break release", lease(OTHER, 10), "released", OTHER, REMOVE),
    ("break does not apply to check", lease(OTHER, 10), "checked", OTHER, FAIL_HELD),
    ("break on free", None, "acquired", OTHER, CREATE),
    ("future refresh counts fresh", lease(OTHER, -60), "acquired", None, FAIL_HELD),
    ("unreadable", parse_lease("{half"), "acquired", None, FAIL_STALE),
    ("unreadable broken by name", parse_lease(""), "acquired", UNREADABLE, BREAK),
]


@pytest.mark.parametrize(
    ("existing", "state", "break_run_id", "action"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(existing, state, break_run_id, action):
    got, message = decide(existing, MINE, NOW, 1800, break_run_id, state, "/x/.run.lock")
    assert got == action
    assert "/x/.run.lock" in message


def test_decide_held_message():
    _, msg = decide(lease(OTHER, 42), MINE, NOW, 1800, path="/x/.run.lock")
    assert msg == (
        f"Stage 2 run lock /x/.run.lock is held by run {OTHER} (owner ops@laptop, since "
        f"{iso(NOW - 7200)}, last seen 42 s ago). Another run is in progress; wait for it, "
        f"or if it died, rerun with -e birth_stage2_break_lock={OTHER}"
    )


def test_decide_stale_message_never_takes_over():
    action, msg = decide(lease(OTHER, 4000), MINE, NOW, 1800, path="/x/.run.lock")
    assert action == FAIL_STALE
    assert "last seen 4000 s ago" in msg
    assert "looks stale" in msg and "never taken over silently" in msg
    assert msg.endswith(f"-e birth_stage2_break_lock={OTHER}")


def test_decide_unreadable_message():
    _, msg = decide(parse_lease("garbage"), MINE, NOW, 1800)
    assert "held by run UNREADABLE" in msg and "not valid JSON" in msg
    assert msg.endswith("-e birth_stage2_break_lock=UNREADABLE")


@pytest.mark.parametrize(("run_id", "state"), [("", "acquired"), (None, "acquired"), ("r", "x")])
def test_decide_rejects(run_id, state):
    with pytest.raises(ValueError):
        decide(None, run_id, NOW, 1800, state=state)


def test_timestamps_round_trip():
    assert epoch(iso(NOW)) == float(int(NOW))
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert epoch("yesterday") is None and epoch(None) is None


@pytest.mark.parametrize("text", ["", "{", "[]", '{"owner": "x"}', '{"run_id": 3}'])
def test_parse_lease_unreadable(text):
    assert parse_lease(text)["run_id"] == UNREADABLE


# ----------------------------------------------------------------------------- the module


@pytest.fixture
def lock_path(tmp_path):
    return tmp_path / "stage" / ".run.lock"


def write(path, run_id, age):
    path.parent.mkdir(exist_ok=True)
    import time

    now = time.time()
    path.write_text(json.dumps(new_lease(run_id, now - age, "them@elsewhere", iso(now - 9000))))


def test_module_acquire_refresh_release(run_module, lock_path):
    lock_path.parent.mkdir()
    args = {"path": str(lock_path), "run_id": MINE, "owner": "me@laptop"}
    out = run_module("birth_run_lock", args)
    assert (out["changed"], out["action"]) == (True, CREATE)
    on_disk = json.loads(lock_path.read_text())
    assert on_disk["run_id"] == MINE and on_disk["owner"] == "me@laptop"
    assert out["lease"] == on_disk
    assert not [p for p in lock_path.parent.iterdir() if p.name != ".run.lock"]  # no temp left

    out = run_module("birth_run_lock", args)
    assert (out["changed"], out["action"]) == (False, REFRESH)
    assert json.loads(lock_path.read_text())["acquired_at"] == on_disk["acquired_at"]

    out = run_module("birth_run_lock", dict(args, state="checked"))
    assert (out["changed"], out["action"]) == (False, OURS)

    out = run_module("birth_run_lock", dict(args, state="released"))
    assert (out["changed"], out["action"]) == (True, REMOVE)
    assert not lock_path.exists()

    out = run_module("birth_run_lock", dict(args, state="released"))
    assert (out["changed"], out["action"]) == (False, NOOP)


def test_module_refuses_another_run(run_module, lock_path):
    write(lock_path, OTHER, 30)
    before = lock_path.read_text()
    for state in ("acquired", "checked"):
        for check_mode in (False, True):
            args = {"path": str(lock_path), "run_id": MINE, "state": state}
            out = run_module("birth_run_lock", args, check_mode)
            assert out["failed"] is True and out["action"] == FAIL_HELD
            assert out["holder"] == OTHER
            assert f"is held by run {OTHER} (owner them@elsewhere" in out["msg"]
            assert f"rerun with -e birth_stage2_break_lock={OTHER}" in out["msg"]
    assert lock_path.read_text() == before


def test_module_stale_lease_is_not_taken(run_module, lock_path):
    write(lock_path, OTHER, 4000)
    out = run_module("birth_run_lock", {"path": str(lock_path), "run_id": MINE})
    assert out["failed"] is True and out["action"] == FAIL_STALE
    assert json.loads(lock_path.read_text())["run_id"] == OTHER


def test_module_break(run_module, lock_path):
    write(lock_path, OTHER, 4000)
    args = {"path": str(lock_path), "run_id": MINE, "break_run_id": OTHER}
    out = run_module("birth_run_lock", args, check_mode=True)
    assert (out["changed"], out["action"]) == (True, BREAK)
    assert out["msg"].startswith("check mode, nothing written")
    assert json.loads(lock_path.read_text())["run_id"] == OTHER
    out = run_module("birth_run_lock", args)
    assert (out["changed"], out["action"]) == (True, BREAK)
    assert json.loads(lock_path.read_text())["run_id"] == MINE


def test_module_release_leaves_another_runs_lease(run_module, lock_path):
    write(lock_path, OTHER, 30)
    out = run_module(
        "birth_run_lock", {"path": str(lock_path), "run_id": MINE, "state": "released"}
    )
    assert (out["changed"], out["action"]) == (False, NOOP)
    assert "left in place" in out["msg"]
    assert "left in place" in json.dumps(out.get("warnings"))
    assert lock_path.exists()


def test_module_check_mode_writes_nothing(run_module, lock_path):
    lock_path.parent.mkdir()
    args = {"path": str(lock_path), "run_id": MINE}
    out = run_module("birth_run_lock", args, check_mode=True)
    assert (out["changed"], out["action"]) == (True, CREATE)
    assert out["lease"]["run_id"] == MINE
    assert not lock_path.exists()
    write(lock_path, MINE, 10)
    out = run_module("birth_run_lock", dict(args, state="released"), check_mode=True)
    assert (out["changed"], out["action"]) == (True, REMOVE)
    assert lock_path.exists()


def test_module_missing_directory(run_module, lock_path):
    out = run_module("birth_run_lock", {"path": str(lock_path), "run_id": MINE})
    assert out["failed"] is True
    assert out["msg"] == f"directory {lock_path.parent} of the run lock {lock_path} does not exist"


def test_module_unreadable_lease(run_module, lock_path):
    lock_path.parent.mkdir()
    lock_path.write_text("")
    out = run_module("birth_run_lock", {"path": str(lock_path), "run_id": MINE})
    assert out["failed"] is True and out["holder"] == UNREADABLE
    args = {"path": str(lock_path), "run_id": MINE, "break_run_id": UNREADABLE}
    out = run_module("birth_run_lock", args)
    assert out["action"] == BREAK
    assert json.loads(lock_path.read_text())["run_id"] == MINE


# ----------------------------------------------------------------------------- the fence


def test_fence_lets_only_the_holder_write():
    now = 1_700_000_000.0
    assert fence(new_lease(MINE, now), MINE, "/x/lock") is None
    broken = fence(new_lease(OTHER, now, "them@host"), MINE, "/x/lock")
    assert "now belongs to run run-other" in broken and "it was broken" in broken
    assert "owner them@host" in broken
    assert "is gone (released or broken)" in fence(None, MINE, "/x/lock")


def test_heartbeat_moves_refreshed_at_only():
    lease = new_lease(MINE, 1_700_000_000.0, "me@host")
    later = heartbeat(lease, 1_700_000_600.0)
    assert later["refreshed_at"] == iso(1_700_000_600.0)
    assert {k: v for k, v in later.items() if k != "refreshed_at"} == {
        k: v for k, v in lease.items() if k != "refreshed_at"
    }
    assert heartbeat(lease, 1_700_000_600.0, hold="outcome unknown")["hold"] == "outcome unknown"


def test_a_held_lease_is_kept_at_release_and_named_to_others():
    now = 1_700_000_000.0
    held = heartbeat(new_lease(MINE, now), now, hold="the outcome of 05.sql is unknown")
    action, message = decide(held, MINE, now, 1800, state="released")
    assert action == NOOP
    assert "kept for run run-mine" in message and "birth_stage2_break_lock=run-mine" in message
    action, message = decide(held, OTHER, now, 1800)
    assert action == FAIL_HELD and "held on purpose: the outcome of 05.sql" in message
    # Broken by name, as the runbook says, it is taken over.
    assert decide(held, OTHER, now, 1800, break_run_id=MINE)[0] == BREAK


def test_module_sql_refuses_to_run_without_the_lease(run_module, fake_docker, lock_path):
    write(lock_path, OTHER, 5)
    out = run_module(
        "birth_sql",
        {
            "container": "pg",
            "db_name": "d",
            "db_user": "u",
            "sql": "SELECT 1;",
            "lease_path": str(lock_path),
            "lease_run_id": MINE,
        },
    )
    assert out["failed"] and out["fenced"] and out["rc"] is None
    assert (
        "now belongs to run run-other" in out["msg"] and "nothing of this script ran" in out["msg"]
    )
    assert not fake_docker.called


def test_module_sql_refreshes_the_lease_it_holds(run_module, fake_docker, lock_path):
    write(lock_path, MINE, 900)
    before = json.loads(lock_path.read_text())["refreshed_at"]
    connection = {"container": "pg", "db_name": "d", "db_user": "u"}
    fake_docker.answer_json({"changed": False})
    out = run_module(
        "birth_sql",
        dict(connection, sql="SELECT 1;", lease_path=str(lock_path), lease_run_id=MINE),
    )
    assert not out.get("failed"), out
    assert json.loads(lock_path.read_text())["refreshed_at"] > before
