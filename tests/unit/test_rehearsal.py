"""The apply rehearsal's verdict: pass 1 is the plan, pass 2 is nothing, births are back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "rehearsal",
    Path(__file__).parents[2] / "roles" / "birth_stage2" / "filter_plugins" / "rehearsal.py",
)
rehearsal = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(rehearsal)

GOOD = {
    "plan": {"a": 3, "b": 1},
    "pass1": {"a": 3, "b": 1},
    "pass2": {"a": 0, "b": 0},
    "births_before": 10,
    "births_after_rollback": 10,
}


def test_a_rehearsal_that_births_the_plan_once_and_rolls_back_passes():
    assert rehearsal.rehearsal_problems(GOOD) == []


def test_every_problem_is_named():
    bad = {**GOOD, "pass1": {"a": 2}, "pass2": {"a": 0, "b": 1}, "births_after_rollback": 11}
    assert rehearsal.rehearsal_problems(bad) == [
        "a: pass 1 applied 2, plan says 3",
        "b: pass 1 applied nothing, plan says 1",
        "b: pass 2 applied 1, must be 0 (not idempotent)",
        "births 10 before, 11 after rollback",
    ]


def test_nothing_planned_refuses_only_before_any_apply():
    empty = {"plan": {}, "pass1": {}, "pass2": {}, "births_before": 5, "births_after_rollback": 5}
    assert rehearsal.rehearsal_problems(empty) == [
        "no planned ledger rows to rehearse: run --tags plan first"
    ]
    assert rehearsal.rehearsal_problems(empty, check_mode=True) == []
    assert rehearsal.rehearsal_problems(empty, applied_rows=5) == []
