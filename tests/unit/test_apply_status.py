"""The apply's status lines (filter_plugins/apply_status.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "apply_status",
    Path(__file__).parents[2] / "roles" / "birth_stage2" / "filter_plugins" / "apply_status.py",
)
status = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(status)

ROW = {
    "collection": "dot_domain_rules", "total": 67, "done": 40, "status": "applying",
    "batches": 12, "percent": 59.7, "per_second": 20.0, "last_batch_rows": 7,
}  # fmt: skip


def test_a_running_row_shows_rate_and_eta():
    line = status.row_line(ROW)
    assert line == (
        "dot_domain_rules 40/67 (applying, 59.7%), 12 batch(es), 20 births/s, ETA 0:00:01, "
        "last batch read 7 rows"
    )


def test_a_done_row_has_no_eta_and_a_fresh_row_no_rate():
    assert "ETA" not in status.row_line(dict(ROW, done=67, status="done"))
    fresh = dict(ROW, done=0, status="planned", batches=0, per_second=None, last_batch_rows=None)
    assert status.row_line(fresh) == "dot_domain_rules 0/67 (planned, 59.7%), 0 batch(es)"


def test_eta_in_hours():
    assert "ETA 2:46:40" in status.row_line(dict(ROW, total=10040, done=40, per_second=1.0))


def test_paused_session_control_and_totals():
    lines = status.status_lines(
        {
            "deployed": True,
            "control": {"state": "pause", "set_by": "alice", "set_at": "t", "reason": "lag"},
            "running": [
                {"pid": 7, "session": "birth_stage2:r1", "since": "s", "waiting": "PgSleep"}
            ],
            "rows": [ROW, dict(ROW, collection="b", total=3, done=3, status="done")],
        },
        "QT-001",
    )
    assert lines[0] == "QT-001 control: pause (set by alice at t: lag)"
    assert lines[1] == "not throttled"
    assert (
        lines[2]
        == "apply session pid 7 (birth_stage2:r1), since s: paused, holding between batches"
    )
    assert lines[-1] == "total: 43/70 births applied"


def test_nothing_deployed_and_never_steered():
    assert status.status_lines({"deployed": False}, "QT-001") == [
        "QT-001: no apply has been deployed on this database (nothing to show)"
    ]
    lines = status.status_lines({"deployed": True, "control": None, "running": [], "rows": []}, "Q")
    assert lines == [
        "Q control: run (never steered)",
        "no apply session is running",
        "total: 0/0 births applied",
    ]


def test_not_a_mapping():
    with pytest.raises(ValueError, match="must be a mapping"):
        status.status_lines(None, "Q")


def test_throttled_session_its_reason_batch_size_and_retries():
    lines = status.status_lines(
        {
            "deployed": True,
            "control": {
                "state": "run", "set_by": "r1", "set_at": "t", "reason": "apply started",
                "throttle": "1 session(s) waiting", "throttle_since": "t2", "batch_rows": 800,
            },
            "running": [
                {"pid": 7, "session": "birth_stage2:r1", "since": "s", "waiting": "PgSleep"}
            ],
            "rows": [dict(ROW, last_batch_ms=412.5, throttled_s=3.2, retried=1)],
        },
        "QT-001",
    )  # fmt: skip
    assert lines[1:4] == [
        "throttled since t2: 1 session(s) waiting",
        "next batch aims at 800 rows",
        "apply session pid 7 (birth_stage2:r1), since s: throttled, holding between batches",
    ]
    assert lines[4].endswith(
        "last batch read 7 rows in 412.5 ms, throttled 3.2 s, 1 batch(es) retried after a lock"
        " timeout"
    )


def test_progress_prints_what_moved_and_the_throttle_when_it_changes():
    planned = dict(ROW, collection="b", total=3, done=0, status="planned", batches=0)
    state = {"deployed": True, "control": {"state": "run", "set_by": "r1"}, "rows": [ROW, planned]}
    lines, seen = status.progress_lines(state, {})
    assert lines == [status.row_line(ROW)]  # a planned collection not started says nothing
    assert status.progress_lines(state, seen) == ([], seen)  # nothing moved
    moved = dict(ROW, done=41)
    throttled = {
        **state,
        "control": {"state": "run", "set_by": "r1", "throttle": "lag"},
        "rows": [moved, planned],
    }
    lines, seen = status.progress_lines(throttled, seen)
    assert lines == ["throttled: lag", status.row_line(moved)]
    free = {**throttled, "control": {"state": "pause", "set_by": "bob"}}
    lines, _ = status.progress_lines(free, seen)
    assert lines == ["no longer throttled", "control: pause (set by bob)"]
    assert status.progress_lines(None, seen) == ([], seen)
