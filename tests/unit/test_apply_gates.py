"""The apply's gates: which apply a ledger calls for and every reason it may not run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "apply_gates",
    Path(__file__).parents[2] / "roles" / "birth_stage2" / "filter_plugins" / "apply_gates.py",
)
gates = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gates)

SHA = "a" * 64
READY = {"status": "ACTION_READY", "reasons": []}


def row(collection, status="planned", expected=10, applied=0, permit_id=None, id_=1):
    return {
        "id": id_,
        "collection": collection,
        "status": status,
        "expected": expected,
        "applied": applied,
        "permit_id": permit_id,
    }


def summary(sha=SHA, deltas=None):
    return {
        "evidence": {"sha256": sha, "author": "alice"},
        "dryrun": {"collections": {c: {"expected_delta": d} for c, d in (deltas or {}).items()}},
    }


def state(ledger, decision=READY, **kw):
    base = {
        "decision": decision,
        "ledger": ledger,
        "evidence_sha256": SHA,
        "open_permit": {"id": 7},
        "permits": {},
        "confirm_review": {"verdict": "approved"},
        "dryrun": {},
    }
    base.update(kw)
    return base


def run(st, confirm_summary=None):
    cs = summary() if confirm_summary is None else confirm_summary
    return gates.apply_gates(st, "RUN1", cs, "/r", "birth-stage2-qt001-apply")


@pytest.mark.parametrize(
    ("ledger", "mode"),
    [
        ([row("a"), row("b")], "fresh"),
        ([row("a", "done", applied=10), row("b", "done", applied=10)], "nothing"),
        ([row("a", "applying", applied=3, permit_id=7), row("b")], "resume"),
        ([row("a", permit_id=7)], "resume"),  # planned but under the consumed permit
        ([], "fresh"),
    ],
)
def test_apply_mode(ledger, mode):
    assert gates.apply_mode(ledger) == mode


def test_a_ready_fresh_apply_has_no_problem_and_takes_the_open_permit():
    out = run(state([row("a"), row("b")]))
    assert out["problems"] == []
    assert out["mode"] == "fresh"
    assert out["permit_id"] == 7
    assert [t["collection"] for t in out["targets"]] == ["a", "b"]


def test_every_closed_gate_of_the_decision_is_listed_with_its_fix():
    decision = {
        "status": "NOT_READY",
        "reasons": ["approved_independent_review: none for sha x", "open_permit: none open"],
    }
    out = run(state([row("a")], decision=decision))
    assert [p["gate"] for p in out["problems"]] == ["approved_independent_review", "open_permit"]
    assert "playbooks/review.yml" in out["problems"][0]["fix"]
    assert "someone other than alice" in out["problems"][0]["fix"]
    assert "playbooks/permit.yml" in out["problems"][1]["fix"]


def test_stale_evidence_names_both_hashes():
    out = run(state([row("a")]), summary(sha="b" * 64))
    (p,) = out["problems"]
    assert p["gate"] == "evidence"
    assert "b" * 64 in p["reason"] and SHA in p["reason"]


@pytest.mark.parametrize(
    ("confirm_summary", "text"),
    [({}, "no signed dry-run record of run RUN1"), ({"evidence": {}}, "did no dry-run")],
)
def test_the_confirmed_run_must_be_a_dry_run(confirm_summary, text):
    out = run(state([row("a")]), confirm_summary)
    assert out["problems"][0]["gate"] == "confirm"
    assert text in out["problems"][0]["reason"]


def test_a_failed_row_stops_everything():
    out = run(state([row("a", "failed", applied=4), row("b")]))
    assert out["problems"][0]["gate"] == "ledger"
    assert "a is failed (applied 4 of 10)" in out["problems"][0]["reason"]


def consumed(permit_id=7):
    return {str(permit_id): {"status": "consumed", "scope": "birth-stage2-qt001-apply"}}


def test_a_clean_resume_continues_under_its_consumed_permit():
    ledger = [row("a", "applying", applied=3, permit_id=7), row("b", permit_id=7)]
    now = {"a": {"expected_delta": 7}, "b": {"expected_delta": 10}}
    st = state(ledger, permits=consumed(), dryrun=now)
    out = run(st, summary(deltas={"a": 10, "b": 10}))
    assert out["problems"] == []
    assert out["mode"] == "resume"
    assert out["permit_id"] == 7


def test_a_resume_stops_when_births_moved_behind_the_apply():
    ledger = [row("a", "applying", applied=3, permit_id=7)]
    st = state(ledger, permits=consumed(), dryrun={"a": {"expected_delta": 5}})
    out = run(st, summary(deltas={"a": 10}))
    assert [p["gate"] for p in out["problems"]] == ["consistency"]
    assert "dry-run delta now 5" in out["problems"][0]["reason"]


def test_a_resume_needs_its_own_consumed_permit_and_the_reviewed_dry_run():
    ledger = [row("a", "applying", applied=3, permit_id=9)]
    st = state(
        ledger,
        permits={"9": {"status": "revoked", "scope": "birth-stage2-qt001-apply"}},
        confirm_review={},
        dryrun={"a": {"expected_delta": 7}},
        open_permit=None,
    )
    out = run(st, summary(deltas={"a": 12}))
    assert [p["gate"] for p in out["problems"]] == [
        "permit",
        "approved_independent_review",
        "confirm",
    ]
    assert "playbooks/permit.yml" in out["problems"][0]["fix"]


@pytest.mark.parametrize("old", [{"status": "revoked"}, {"status": "consumed", "expired": True}])
def test_a_resume_continues_under_a_new_permit_once_the_old_one_is_stopped(old):
    ledger = [row("a", "applying", applied=3, permit_id=9)]
    st = state(
        ledger,
        permits={"9": {**old, "scope": "birth-stage2-qt001-apply"}},
        dryrun={"a": {"expected_delta": 7}},
    )
    out = run(st, summary(deltas={"a": 10}))
    assert out["problems"] == []
    assert out["permit_id"] == 7


def test_a_resume_ignores_missing_review_and_permit_reasons_but_not_a_red_guard():
    decision = {
        "status": "NOT_READY",
        "reasons": ["open_permit: none", "safety_guards_green: v.c red"],
    }
    ledger = [row("a", "applying", applied=3, permit_id=7)]
    st = state(ledger, decision=decision, permits=consumed(), dryrun={"a": {"expected_delta": 7}})
    out = run(st, summary(deltas={"a": 10}))
    assert [p["gate"] for p in out["problems"]] == ["safety_guards_green"]


def test_nothing_left_needs_no_permit():
    decision = {"status": "NOT_READY", "reasons": ["open_permit: x"]}
    out = run(state([row("a", "done", applied=10)], decision=decision))
    assert out == {"mode": "nothing", "targets": [], "permit_id": None, "problems": []}


# ---- after the apply: the check, the growth the final guard asserts, summary.json's apply key


def after_row(collection, status="done", expected=3, applied=3, permit_id=7, **kw):
    return {"collection": collection, "status": status, "expected": expected, "applied": applied,
            "permit_id": permit_id, "batches": 1, "longest_batch_ms": 2.5, **kw}  # fmt: skip


CONSUMED = {"7": {"status": "consumed"}}
RERUN_VIEW = "v_rerun"


def test_apply_check_passes_a_plan_applied_exactly():
    after = {"ledger": [after_row("a"), after_row("c", status="cancelled")], "permits": CONSUMED}
    rows = [{"view": RERUN_VIEW, "ok": True, "label": "fine"}, {"view": "other", "ok": False}]
    assert gates.apply_check(after, {"a": {"expected_delta": 0}}, rows, RERUN_VIEW) == []


def test_apply_check_names_every_reason():
    after = {
        "ledger": [
            after_row("a", status="applying", applied=2),
            after_row("b", permit_id=None),
            after_row("d", permit_id=8),
        ],
        "permits": {**CONSUMED, "8": {"status": "open"}},
    }
    rerun = {"a": {"expected_delta": 1}, "b": {"expected_delta": None}, "d": {"expected_delta": 0}}
    rows = [{"view": RERUN_VIEW, "ok": False, "label": "v_rerun.rerun_delta_zero:a: 1"}]
    assert gates.apply_check(after, rerun, rows, RERUN_VIEW) == [
        "a is applying with 2 of 3 applied",
        "a: rerun dry-run delta 1, must be 0",
        "b: rerun dry-run delta unknown, must be 0",
        "b: permit none is missing, must be consumed",
        "d: permit 8 is open, must be consumed",
        "rerun-delta guard red: v_rerun.rerun_delta_zero:a: 1",
    ]


def test_apply_growth_is_what_was_still_missing():
    targets = [
        {"collection": "a", "expected": 10, "applied": 4},
        {"collection": "b", "expected": 5, "applied": 5},
    ]
    assert gates.apply_growth(targets) == {"a": 6}
    assert gates.apply_growth([]) == {}


def test_apply_result_keeps_each_row_and_the_last_permit():
    ledger = [after_row("a"), after_row("b", permit_id=9), after_row("c", permit_id=None)]
    after = {"ledger": ledger}
    rerun = {"a": {"expected_delta": 0}, "b": {"expected_delta": 2}}
    got = gates.apply_result(after, rerun, "fresh", "RUN1", "5000")
    assert got["a"] == {"expected": 3, "applied": 3, "batches": 1, "status": "done",
                        "longest_batch_ms": 2.5}  # fmt: skip
    assert (got["permit_id"], got["rerun_total"], got["mode"]) == (9, 2, "fresh")
    assert (got["confirm"], got["batch_size"]) == ("RUN1", 5000)
    assert gates.apply_result({"ledger": []}, {}, "nothing", "R", 1)["permit_id"] is None
