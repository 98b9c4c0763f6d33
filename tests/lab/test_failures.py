"""Each failure of docs/RUNBOOK.md, reproduced on the lab: the play stops (or, for a no-go,
reports it), the output carries one of the fragments the runbook quotes for that failure,
and a refused or leaking run leaves births exactly as they were.

The lab is reset before and after the module. BIRTH_LAB_DB=<db> (a lab database made with
`ansible-playbook playbooks/lab.yml -e lab_db_name=<db>`) runs the same tests against that
database, with its own staging root and run lock, so they can run beside other users of the
default lab.
"""

# The SQL below is built from the lab's own names and fixed test values, never from input.
# ruff: noqa: S608

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
import uuid
from datetime import UTC, datetime

import pytest

from tests.conftest import LAB_CONTAINER, LAB_DB, REPO, lab_env
from tests.lab.labrun import (  # one isolation plumbing for every lab module
    LOCK_PATH,
    births,
    play,
    reset_lab,
    sql,
)
from tests.test_runbook import check_command, failure_sections, section_fragments, squash


@pytest.fixture(scope="module", autouse=True)
def lab():
    reset_lab()
    yield
    reset_lab()


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def expect(section: str, out: str) -> str:
    """One of the runbook's fragments for the section is in the output; returns it."""
    fragments = [fragment for _, fragment in section_fragments(section)]
    seen = [f for f in fragments if squash(f) in out]
    assert seen, f"none of the runbook's {section} fragments {fragments} in:\n{out[-4000:]}"
    return seen[0]


def refused(section: str, *args: str, playbook: str = "stage2.yml") -> str:
    """The run fails with the section's message and leaves births unchanged."""
    before = births()
    rc, out = play(*args, playbook=playbook)
    assert rc != 0, out[-3000:]
    expect(section, out)
    assert births() == before
    return out


# --------------------------------------------------------------------------- inputs


def test_bad_name_stops_preflight():
    refused("bad-name", "--tags", "dryrun", "-e", "birth_stage2_container=")


def test_missing_object_names_its_variable():
    out = refused("missing-object", "--tags", "dryrun", "-e", "birth_stage2_schema=no_such_schema")
    assert "birth_stage2_objects.birth_registry" in out


def test_partial_map_override_names_the_missing_keys():
    partial = json.dumps({"birth_stage2_objects": {"birth_registry": "birth_registry"}})
    out = refused("missing-variable", "--tags", "dryrun", "-e", partial)
    assert "birth_stage2_objects.collection_registry" in out


def test_unreachable_vps_says_so():
    refused("ssh-lost-mid-step", "--tags", "dryrun", "-e", "ansible_port=1")


# --------------------------------------------------------------------------- locks


def test_lock_held_by_another_run_then_broken_as_the_runbook_says():
    holder = f"{new_run_id()}-other"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lease = {
        "run_id": holder,
        "owner": "someone@elsewhere",
        "acquired_at": now,
        "refreshed_at": now,
    }
    LOCK_PATH.write_text(json.dumps(lease))
    try:
        out = refused("lock-held", "--tags", "dryrun")
        assert holder in out
        assert json.loads(LOCK_PATH.read_text())["run_id"] == holder, "the lease was taken over"
        # The runbook's next command, with the holder's run id.
        command = next(
            c
            for c in [s for s in failure_sections()["lock-held"].split("`") if "break_lock" in s]
            if c.startswith("ansible-playbook")
        )
        assert check_command(command) == []
        args = command.replace("RUN_ID", holder).split()[2:]
        rc, out = play(*args)
        assert rc == 0, out[-3000:]
        assert not LOCK_PATH.exists()
    finally:
        LOCK_PATH.unlink(missing_ok=True)


def _advisory_key(name: str) -> int:
    path = REPO / "module_utils" / "birth_stage2_psql.py"
    spec = importlib.util.spec_from_file_location("birth_stage2_psql_for_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.advisory_key(name)


def test_lock_held_by_a_live_session():
    name = f"birth_stage2_test_{uuid.uuid4().hex[:8]}"
    holder = subprocess.Popen(
        ["docker", "exec", "-i", LAB_CONTAINER, "psql", "-X", "-q", "-U", "postgres", "-d", LAB_DB],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=lab_env(),
    )
    try:
        holder.stdin.write(f"SELECT pg_advisory_lock({_advisory_key(name)});\n\\echo held\n")
        holder.stdin.flush()
        # psql prints the (void) result first; the echo comes once the lock is held.
        while (line := holder.stdout.readline()) and line.strip() != "held":
            pass
        assert line.strip() == "held", holder.stderr.read()
        out = refused(
            "lock-held",
            "--tags",
            "dryrun",
            "-e",
            f"birth_stage2_lock_name={name}",
            "-e",
            "birth_stage2_lock_wait_seconds=1",
        )
        assert "another Stage 2 run is in progress" in out
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# --------------------------------------------------------------------------- the ledger


def _ledger_row(status: str) -> None:
    sql(
        "INSERT INTO birth_backfill_ledger (plan_code, collection_name, expected_delta, "
        "applied_delta, status, dry_run) "
        f"VALUES ('QT-001', 'apr_approvals', 42, 0, '{status}', false)"
    )


def test_open_apply_blocks_every_other_run():
    _ledger_row("applying")
    try:
        out = refused("apply-interrupted", "--tags", "dryrun")
        assert "apr_approvals" in out
    finally:
        sql("DELETE FROM birth_backfill_ledger WHERE plan_code = 'QT-001'")


def test_rollback_refused_after_an_apply_changes_nothing():
    _ledger_row("done")
    try:
        refused("rollback-refused", "--tags", "rollback")
        assert sql("SELECT count(*) FROM birth_backfill_ledger WHERE plan_code = 'QT-001'") == ["1"]
    finally:
        sql("DELETE FROM birth_backfill_ledger WHERE plan_code = 'QT-001'")


# --------------------------------------------------------------------------- births


def test_birth_leak_during_classification_is_rolled_back():
    sql(
        "CREATE FUNCTION public.test_failures_leak() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN INSERT INTO public.birth_registry (collection_name, entity_code, birth_source) "
        "VALUES ('collection_registry', 'leak::' || NEW.collection_name, 'gateway'); "
        "RETURN NULL; END $$; "
        "CREATE TRIGGER zz_test_failures_leak AFTER UPDATE OF birth_code_kind "
        "ON collection_registry FOR EACH ROW EXECUTE FUNCTION public.test_failures_leak();"
    )
    try:
        refused("birth-leak", "--tags", "classify")
        assert sql(
            "SELECT count(*) FROM collection_registry "
            "WHERE birth_code_source = 'inferred_from_existing_trigger'"
        ) == ["0"]
    finally:
        sql(
            "DROP TRIGGER zz_test_failures_leak ON collection_registry; "
            "DROP FUNCTION public.test_failures_leak();"
        )


def test_a_declared_birth_that_did_not_happen_fails_the_guard():
    """Declared exceptions are exact: a +1 that does not happen fails like a leak."""
    declared = json.dumps({"birth_stage2_declared_births": {"knowledge_documents": 1}})
    out = refused("birth-leak", "--tags", "dryrun", "-e", declared)
    assert "knowledge_documents" in out


# --------------------------------------------------------------------------- guards, gates


def test_safety_guard_red_stops_verify():
    rc, out = play("--tags", "views")
    assert rc == 0, out[-3000:]
    target, column = sql(
        "SELECT collection_name, birth_code_column FROM collection_registry "
        "WHERE birth_code_kind = 'column' ORDER BY collection_name LIMIT 1"
    )[0].split("\t")
    set_column = (
        "UPDATE collection_registry SET birth_code_column = '{}' WHERE collection_name = '{}'"
    )
    sql(set_column.format("no_such_column", target))
    try:
        out = refused("guard-red", "--tags", "verify")
        assert target in out
    finally:
        sql(set_column.format(column, target))


@pytest.fixture(scope="module")
def planned_run():
    """A run that planned and dry-ran (the views exist from the guard test): its run id."""
    run_id = new_run_id()
    rc, out = play("--tags", "views,plan,dryrun", "-e", f"birth_stage2_run_id={run_id}")
    assert rc == 0, out[-3000:]
    return run_id, json.loads((REPO / "reports" / run_id / "summary.json").read_text())


def test_apply_without_review_and_permit_is_refused(planned_run):
    run_id, _ = planned_run
    ledger = sql("SELECT status, count(*) FROM birth_backfill_ledger GROUP BY 1 ORDER BY 1")
    out = refused(
        "review-missing-or-stale", "--tags", "apply", "-e", f"birth_stage2_apply_confirm={run_id}"
    )
    expect("permit-missing-or-expired", out)
    assert sql("SELECT status, count(*) FROM birth_backfill_ledger GROUP BY 1 ORDER BY 1") == ledger


def _review(run_id: str, reviewer: str, evidence: str) -> tuple[str, ...]:
    return (
        "-e",
        f"birth_stage2_reviewer={reviewer}",
        "-e",
        "birth_stage2_review_verdict=approved",
        "-e",
        f"birth_stage2_review_evidence={evidence}",
        "-e",
        f"birth_stage2_review_run={run_id}",
    )


def test_self_review_is_refused(planned_run):
    run_id, summary = planned_run
    author, sha = summary["evidence"]["author"], summary["evidence"]["sha256"]
    out = refused(
        "review-missing-or-stale", *_review(run_id, author, sha), playbook="playbooks/review.yml"
    )
    assert "self-review" in out
    reviews = "SELECT count(*) FROM governance_reviews WHERE evidence_sha256 = '{}'"
    assert sql(reviews.format(sha)) == ["0"]


def test_permit_refused_on_a_bad_action():
    refused(
        "permit-missing-or-expired",
        "-e",
        "birth_stage2_permit_action=maybe",
        playbook="playbooks/permit.yml",
    )


def test_no_go_collection_is_reported_and_a_review_of_older_evidence_is_stale(planned_run):
    run_id, summary = planned_run
    # A row whose code is NULL in a collection with missing births: its backfill would be wrong.
    target = next(
        c
        for c, v in summary["dryrun"]["collections"].items()
        if v["expected_delta"] and v["column"]
    )
    column = summary["dryrun"]["collections"][target]["column"]
    sql(
        f'ALTER TABLE public."{target}" ALTER COLUMN "{column}" DROP NOT NULL; '
        f'UPDATE public."{target}" SET "{column}" = NULL '
        f'WHERE id = (SELECT max(id) FROM public."{target}")'
    )
    before = births()
    rc, out = play("--tags", "dryrun")
    assert rc == 0, out[-3000:]
    assert expect("no-go-collection", out) == "unbirthable_rows"
    assert target in out
    assert births() == before
    # The planned run's evidence no longer describes the data: its review is stale.
    sha = summary["evidence"]["sha256"]
    out = refused(
        "review-missing-or-stale",
        *_review(run_id, "t2-reviewer", sha),
        playbook="playbooks/review.yml",
    )
    assert "is stale" in out
