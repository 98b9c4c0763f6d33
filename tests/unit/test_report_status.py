"""The checkpoint's status: COMPLETE once the plan is applied and nothing is left to birth."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "report", Path(__file__).parents[2] / "roles" / "birth_stage2" / "filter_plugins" / "report.py"
)
report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(report)


def summary(apply=None, before=None, after=None, dryrun=None):
    return {
        "apply": apply,
        "counters": {"before": {"ledger": before or {}}, "after": after and {"ledger": after}},
        "dryrun": dryrun,
    }


def test_an_apply_that_finished_every_row_with_a_zero_rerun_is_complete():
    done = {"a": {"status": "done"}, "b": {"status": "done"}, "rerun_total": 0, "mode": "fresh"}
    assert report.report_status(summary(apply=done, after={"done": 2})) == "COMPLETE"
    assert report.report_status(summary(apply={**done, "rerun_total": 1})) == "PARTIAL"
    part = {**done, "b": {"status": "applying"}}
    assert report.report_status(summary(apply=part, after={"done": 1, "applying": 1})) == "PARTIAL"


def test_a_later_run_is_complete_when_every_row_is_done_and_nothing_is_missing():
    assert report.report_status(summary(before={"done": 5})) == "COMPLETE"
    assert report.report_status(summary(before={"done": 5}, dryrun={"total_delta": 0})) == (
        "COMPLETE"
    )
    assert report.report_status(summary(before={"done": 5}, dryrun={"total_delta": 3})) == (
        "PARTIAL"
    )
    assert report.report_status(summary(before={"done": 4, "planned": 1})) == "PARTIAL"
    assert report.report_status(summary(before={"done": 4, "cancelled": 1})) == "COMPLETE"
    assert report.report_status(summary(before={"planned": 5})) == "PARTIAL"
    assert report.report_status(summary()) == "PARTIAL"
