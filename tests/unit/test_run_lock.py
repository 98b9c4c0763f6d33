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
    issue_token,
    lease_token,
    new_lease,
    next_token,
    parse_lease,
    parse_token,
    read_token,
    token_path,
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
    # No temp left: the lease and its token counter only.
    assert sorted(p.name for p in lock_path.parent.iterdir()) == [".run.lock", ".run.lock.token"]

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


# ----------------------------------------------------------------------------- fencing token


@pytest.mark.parametrize(
    ("previous", "now", "token"),
    [
        (None, NOW, int(NOW * 1000)),  # the first token: the time in ms
        (5, NOW, int(NOW * 1000)),  # an old counter: the time wins
        (int(NOW * 1000), NOW, int(NOW * 1000) + 1),  # twice in one millisecond
        (int(NOW * 1000) + 500, NOW, int(NOW * 1000) + 501),  # the clock went back
        (True, NOW, int(NOW * 1000)),  # not a token
    ],
)
def test_next_token_is_strictly_greater_and_never_below_the_time(previous, now, token):
    assert next_token(previous, now) == token


@pytest.mark.parametrize(
    ("text", "token"),
    [("17\n", 17), (" 9 ", 9), ("", None), ("0", None), ("-3", None), ("x1", None), (None, None)],
)
def test_parse_token(text, token):
    assert parse_token(text) == token


def test_lease_token_only_for_integer_tokens():
    assert lease_token(new_lease(MINE, NOW, token=42)) == 42
    assert lease_token(new_lease(MINE, NOW)) is None
    assert lease_token({"run_id": MINE, "token": "42"}) is None
    assert lease_token({"run_id": MINE, "token": True}) is None
    assert lease_token(None) is None


def test_issue_token_counts_up_in_a_counter_file_next_to_the_lease(tmp_path):
    path = str(tmp_path / ".run.lock")
    first = issue_token(path, NOW)
    assert first == int(NOW * 1000)
    assert read_token(path) == first
    assert (tmp_path / ".run.lock.token").read_text() == f"{first}\n"
    assert token_path(path) == f"{path}.token"
    # Same instant, then a clock set back an hour: still strictly increasing.
    assert issue_token(path, NOW) == first + 1
    assert issue_token(path, NOW - 3600) == first + 2
    # A lost counter: the lease being broken carries a token, the new one is above it.
    (tmp_path / ".run.lock.token").unlink()
    assert issue_token(path, NOW - 3600, floor=first + 10) == first + 11
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock.token"]  # no temp left


def test_heartbeat_keeps_the_token():
    lease = new_lease(MINE, 1_700_000_000.0, "me@host", token=7)
    assert heartbeat(lease, 1_700_000_600.0)["token"] == 7
    assert heartbeat(lease, 1_700_000_600.0, hold="why")["token"] == 7


def test_module_tokens_create_refresh_break(run_module, lock_path):
    lock_path.parent.mkdir()
    args = {"path": str(lock_path), "run_id": MINE}
    created = run_module("birth_run_lock", args)["lease"]["token"]
    assert isinstance(created, int) and json.loads(lock_path.read_text())["token"] == created
    assert read_token(str(lock_path)) == created
    # A refresh keeps it.
    assert run_module("birth_run_lock", args)["lease"]["token"] == created
    assert json.loads(lock_path.read_text())["token"] == created
    # Broken by another run: a greater token, and the counter follows.
    broken = run_module(
        "birth_run_lock", {"path": str(lock_path), "run_id": OTHER, "break_run_id": MINE}
    )["lease"]["token"]
    assert broken > created and read_token(str(lock_path)) == broken
    # Released and taken again: greater still (the counter outlives the lease).
    run_module("birth_run_lock", {"path": str(lock_path), "run_id": OTHER, "state": "released"})
    again = run_module("birth_run_lock", args)["lease"]["token"]
    assert again > broken


def test_module_check_mode_issues_no_token(run_module, lock_path):
    lock_path.parent.mkdir()
    out = run_module("birth_run_lock", {"path": str(lock_path), "run_id": MINE}, check_mode=True)
    assert isinstance(out["lease"]["token"], int)
    assert read_token(str(lock_path)) is None and not lock_path.exists()


def test_module_refresh_gives_an_old_lease_a_token(run_module, lock_path):
    write(lock_path, MINE, 10)  # written before tokens existed
    out = run_module("birth_run_lock", {"path": str(lock_path), "run_id": MINE})
    assert out["action"] == REFRESH and isinstance(out["lease"]["token"], int)
    assert json.loads(lock_path.read_text())["token"] == out["lease"]["token"]


def test_module_sql_hands_its_lease_token_to_the_database_fence(run_module, fake_docker, lock_path):
    lock_path.parent.mkdir()
    lock_path.write_text(json.dumps(new_lease(MINE, NOW, "me@host", token=4242)))
    args = {
        "container": "pg",
        "db_name": "d",
        "db_user": "u",
        "sql": "UPDATE t SET a = 1;",
        "lease_path": str(lock_path),
        "lease_run_id": MINE,
        "lock_name": "birth_stage2",
        "fence": {"table": "birth_stage2_fence", "schema": "public"},
    }
    fake_docker.answer_json({"changed": True})
    out = run_module("birth_sql", args)
    assert not out.get("failed") and out["fenced"] is False, out
    assert "SET birth_stage2.fence_token = '4242';" in fake_docker.stdin
    assert "v_run constant text := 'run-mine';" in fake_docker.stdin
    assert 'INSERT INTO "public"."birth_stage2_fence"' in fake_docker.stdin
    # Read only: no fence. No token in the lease, or no fence table named: no fence either.
    for extra in ({"read_only": True}, {"fence": None}):
        run_module("birth_sql", dict(args, **extra))
        assert "fence_token" not in fake_docker.stdin
    lock_path.write_text(json.dumps(new_lease(MINE, NOW, "me@host")))
    run_module("birth_sql", args)
    assert "fence_token" not in fake_docker.stdin

    # The database has seen a greater token: the refusal is reported as fenced.
    lock_path.write_text(json.dumps(new_lease(MINE, NOW, "me@host", token=4242)))
    fake_docker.fail_on(
        "$birth_fence$;",
        "refused by the run fence in the database: this session is run run-mine with fencing "
        "token 4242 (lock 'birth_stage2'), but the database has already seen run run-other with "
        "token 5000: this run's lease was broken (another run took it over), so it stops here; "
        "nothing of this step was written",
        "HINT:  see docs/RUNBOOK.md#lease-broken\n",
    )
    out = run_module("birth_sql", args)
    assert out["failed"] and out["fenced"] is True, out
    assert "run run-other with token 5000" in out["msg"]
    assert "docs/RUNBOOK.md#lease-broken" in out["msg"]
