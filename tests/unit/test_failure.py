"""A failed run's facts: the phase that was running, what was committed before it, and the
runbook section (and its next command) that the message belongs to."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SPEC = importlib.util.spec_from_file_location(
    "failure", ROOT / "roles" / "birth_stage2" / "filter_plugins" / "failure.py"
)
fl = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(fl)
RUNBOOK = (ROOT / "docs" / "RUNBOOK.md").read_text()


@pytest.mark.parametrize(
    ("done", "tags", "phase"),
    [
        ([], ["all"], "preflight"),
        (["preflight"], ["all"], "stage"),
        (["preflight", "stage", "classify"], ["all"], "views"),
        (["preflight"], ["dryrun"], "dryrun"),
        (["preflight", "dryrun"], ["dryrun"], "finish"),
        (["preflight"], ["apply"], "apply"),
        (["preflight"], ["rollback"], "rollback"),
        (["preflight", "stage", "classify", "views", "plan", "dryrun", "rehearse", "decide",
          "verify", "report"], ["all"], "finish"),
    ],
)  # fmt: skip
def test_failed_phase(done, tags, phase):
    assert fl.failed_phase(done, tags) == phase


def test_skipped_phases_are_not_blamed():
    assert fl.failed_phase(["preflight"], ["all"], ["stage", "classify"]) == "views"


@pytest.mark.parametrize(
    ("message", "section"),
    [
        ("Safety guard red on lab-vps: v.x (detail)", "guard-red"),
        ("birth leak during classification: the step is rolled back", "birth-leak"),
        ("birth guard FAILED after 'x': nothing was committed by guarded steps", "birth-leak"),
        ("Stage 2 run lock /x is held by run 1 ...", "lock-held"),
        ("Apply refused on h ... approved_independent_review: ...", "review-missing-or-stale"),
        ("Preflight on h refused 1 input(s), nothing was run: x=\"\" (is empty). Set each in the"
         " inventory", "bad-name"),
        ("birth guard FAILED inside this step's own transaction: 'x' +1 (allowed 0); the step is"
         " rolled back, nothing of it was committed", "birth-leak"),
        ("05.sql: the run lease /l now belongs to run B (...): it was broken, so this run stops"
         " here; nothing of this script ran.", "lease-broken"),
        ("11.sql (wrapper, before the script's first line): ERROR: refused by the run fence in"
         " the database: this session is run A with fencing token 1 (lock 'x'), but the"
         " database has already seen run B with token 2", "lease-broken"),
        ("Preflight on h: the staging root /r does not exist on the VPS; create it: ansible",
         "vps-not-ready"),
        ("something nobody quoted", None),
    ],
)  # fmt: skip
def test_the_runbook_section_is_the_one_quoting_the_message(message, section):
    assert fl.section_for(message, fl.runbook_sections(RUNBOOK)) == section


def test_every_failure_section_has_a_next_command():
    sections = fl.runbook_sections(RUNBOOK)
    assert "guard-red" in sections
    assert all(s["next"].startswith("ansible-playbook ") for s in sections.values())


def facts(message, **kw):
    args = {
        "task": {"name": "Step"},
        "result": {"msg": message},
        "done": ["preflight"],
        "run_tags": ["all"],
        "skip_tags": [],
        "runbook": RUNBOOK,
        "writes": {},
        "check_mode": False,
        "run_id": "R1",
    }
    args.update(kw)
    return fl.failure(**args)


def test_failure_facts_fill_in_the_run_in_the_next_command():
    f = facts("Failed to connect to the host via ssh: Connection refused", run_id="R9")
    assert f["runbook"] == "docs/RUNBOOK.md#ssh-lost-mid-step"
    assert f["next"] == "ansible-playbook stage2.yml --tags dryrun -e birth_stage2_break_lock=R9"
    assert f["phase"] == "stage"
    assert f["step"] == "Step"


def test_an_apply_refusal_names_the_confirmed_run():
    f = facts("Apply refused on h: no open permit", confirm="C1", done=["preflight"],
              run_tags=["apply"])  # fmt: skip
    assert f["phase"] == "apply"
    assert "C1" in f["next"] or "RUN_ID" not in f["next"]


def test_a_held_lock_keeps_the_placeholder_for_the_holder():
    f = facts("Stage 2 run lock /x is held by run OTHER (owner a, age 5 s)")
    assert "birth_stage2_break_lock=RUN_ID" in f["next"]


def test_a_host_stopped_with_the_play_says_so():
    f = facts("", result={}, done=["preflight"], run_tags=["apply"])
    assert f["message"].startswith("stopped because another host of the play failed")
    assert f["runbook"] == "docs/RUNBOOK.md#another-host-failed"
    assert f["phase"] == "apply"


def test_an_unknown_message_points_at_the_failures_and_a_read_only_run():
    f = facts("", result={"failed": True})
    assert f["message"] == "the step failed without a message"
    assert f["runbook"] == "docs/RUNBOOK.md#failures"
    assert f["next"] == "ansible-playbook stage2.yml --tags dryrun"


@pytest.mark.parametrize(
    ("done", "writes", "check", "apply", "said"),
    [
        (["preflight"], {}, False, None, ["nothing"]),
        (["preflight", "stage"], {}, False, None, ["the SQL files staged on the VPS"]),
        (["preflight", "stage", "classify", "views"], {"classified": 39, "views_changed": True},
         False, None, ["the SQL files staged on the VPS", "the classification of 39 collections "
                       "(reversible)", "the Stage 2 views (reversible)"]),
        (["preflight", "classify"], {"classified": 0}, False, None, ["nothing"]),
        (["preflight"], {}, False, {"x": {}}, ["the apply batches that finished before it "
                                                "(births stay)"]),
        (["preflight", "stage", "classify"], {"classified": 39}, True, None,
         ["nothing: check mode rolled every write back"]),
    ],
)  # fmt: skip
def test_committed_before(done, writes, check, apply, said):
    assert fl.committed_before(done, writes, check, apply) == said


def test_a_step_that_returned_counts_even_when_its_phase_was_cut_short():
    assert fl.committed_before(["preflight", "stage"], {"classified": 39}, False) == [
        "the SQL files staged on the VPS",
        "the classification of 39 collections (reversible)",
    ]
