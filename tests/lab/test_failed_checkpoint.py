"""A run that fails still writes its checkpoint: reports/<run_id>/00_checkpoint.md with status
FAILED, the phase and step that failed, the guard's, the database's or the refusal's message,
what the run had committed before it, the runbook section and its next command; and
summary.json with the same under `failure`. Knowledge-base safe like every report.

Covered on the lab: a red safety guard, a birth leak, a refused apply, a preflight refusal
and the SSH link lost mid-run. BIRTH_LAB_DB=<db> runs them against that lab database with
its own staging root and run lock, as tests/lab/test_failures.py does.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.conftest import REPO, lab_env
from tests.lab.labrun import LOCK_PATH, STAGE2_ARGS, births, play, reset_lab, sql, ssh_relay
from tests.lab.test_failures import new_run_id
from tests.test_reports_kb_safe import fenced_lines
from tests.test_runbook import failure_sections

REPORTS = REPO / "reports"


@pytest.fixture(scope="module", autouse=True)
def lab():
    reset_lab()
    yield
    reset_lab()


def runbook_next(section: str) -> str:
    body = failure_sections()[section].split("Next:", 1)[1]
    return next(c for c in re.findall(r"`([^`]+)`", body) if c.startswith("ansible-playbook"))


def failed_run(*args: str) -> tuple[str, str, dict, str]:
    """Run Stage 2 expecting it to fail: (run id, checkpoint text, summary, output)."""
    run_id = new_run_id()
    before = births()
    rc, out = play(*args, "-e", f"birth_stage2_run_id={run_id}")
    assert rc != 0, out[-3000:]
    assert births() == before
    checkpoint = REPORTS / run_id / "00_checkpoint.md"
    assert checkpoint.is_file(), f"the failed run wrote no checkpoint:\n{out[-3000:]}"
    assert fenced_lines(checkpoint) == []
    summary = json.loads((REPORTS / run_id / "summary.json").read_text())
    assert summary["status"] == "FAILED"
    assert summary["inventory_host"] == "lab-vps"
    # The final message names the checkpoint and the next command too.
    assert f"{run_id}/00_checkpoint.md" in out
    return run_id, checkpoint.read_text(), summary, out


def assert_checkpoint(text: str, summary: dict, phase: str, section: str, said: str) -> None:
    failure = summary["failure"]
    assert "Status: FAILED" in text
    assert failure["phase"] == phase
    assert f"| phase | `{phase}` |" in text
    assert failure["step"] and failure["step"] in text
    assert said in failure["message"]
    assert said.replace("`", "'") in text
    assert failure["runbook"] == f"docs/RUNBOOK.md#{section}"
    assert f"(docs/RUNBOOK.md#{section})" in text
    assert failure["next"] in text
    assert "## What was committed before it" in text


def test_red_guard(lab):
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
        _, text, summary, _ = failed_run("--tags", "verify")
    finally:
        sql(set_column.format(column, target))
    assert_checkpoint(text, summary, "verify", "guard-red", "Safety guard red on")
    assert summary["failure"]["next"] == runbook_next("guard-red")
    assert target in text
    assert summary["failure"]["committed_before"] == ["nothing"]


def test_birth_leak_mid_run_says_what_was_committed_before(lab):
    sql(
        "CREATE FUNCTION public.test_checkpoint_leak() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN INSERT INTO public.birth_registry (collection_name, entity_code, birth_source) "
        "VALUES ('collection_registry', 'leak::' || NEW.collection_name, 'gateway'); "
        "RETURN NULL; END $$; "
        "CREATE TRIGGER zz_test_checkpoint_leak AFTER UPDATE OF birth_code_kind "
        "ON collection_registry FOR EACH ROW EXECUTE FUNCTION public.test_checkpoint_leak();"
    )
    try:
        _, text, summary, _ = failed_run()
    finally:
        sql(
            "DROP TRIGGER zz_test_checkpoint_leak ON collection_registry; "
            "DROP FUNCTION public.test_checkpoint_leak();"
        )
    assert_checkpoint(text, summary, "classify", "birth-leak", "birth leak during classification")
    assert summary["phases"] == ["preflight", "stage"]
    assert summary["failure"]["committed_before"] == ["the SQL files staged on the VPS"]
    assert "The SQL files staged on the VPS." in text


def test_refused_apply_names_the_gate_and_the_confirmed_run(lab):
    planned = new_run_id()
    rc, out = play("--tags", "views,plan,dryrun", "-e", f"birth_stage2_run_id={planned}")
    assert rc == 0, out[-3000:]
    ledger = sql("SELECT status, count(*) FROM birth_backfill_ledger GROUP BY 1 ORDER BY 1")
    _, text, summary, _ = failed_run(
        "--tags", "apply", "-e", f"birth_stage2_apply_confirm={planned}"
    )
    assert sql("SELECT status, count(*) FROM birth_backfill_ledger GROUP BY 1 ORDER BY 1") == ledger
    assert summary["failure"]["phase"] == "apply"
    section = summary["failure"]["runbook"].split("#", 1)[1]
    assert section in {"review-missing-or-stale", "permit-missing-or-expired"}
    assert_checkpoint(text, summary, "apply", section, "Apply refused on")
    # The runbook's next command, with the run the apply confirmed.
    assert summary["failure"]["next"] == runbook_next(section).replace("RUN_ID", planned)


def test_preflight_refusal_before_the_run_was_named(lab):
    _, text, summary, _ = failed_run("--tags", "dryrun", "-e", "birth_stage2_container=")
    assert_checkpoint(text, summary, "preflight", "bad-name", "input(s), nothing was run")
    assert summary["births"]["before"] is None
    assert not LOCK_PATH.exists()


# --------------------------------------------------------------------------- the link dies


def test_lost_ssh_link_mid_run(lab):
    """Only this run's link dies (a relay of its own in front of the lab's sshd is killed),
    so the VPS stays up for everyone else; Ansible runs no rescue for an unreachable host, and
    the checkpoint comes from callback_plugins/birth_stage2_lost_link.py."""
    relay, through_relay = ssh_relay()
    run_id = new_run_id()
    env = lab_env()
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env['PATH']}"
    args = ["-e", f"birth_stage2_run_id={run_id}", *STAGE2_ARGS]
    run = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "ansible-playbook"), "stage2.yml", *args, *through_relay],
        cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    classified = (
        "SELECT count(*) FROM collection_registry "
        "WHERE birth_code_source = 'inferred_from_existing_trigger'"
    )
    try:
        deadline = time.monotonic() + 120
        while sql(classified) == ["0"]:  # the classification has committed: mid-way
            assert run.poll() is None, "the run ended before it classified"
            assert time.monotonic() < deadline, "the run never classified"
            time.sleep(0.2)
        relay.kill()
        out, _ = run.communicate(timeout=300)
    finally:
        relay.kill()
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0
    assert "UNREACHABLE!" in out
    checkpoint = REPORTS / run_id / "00_checkpoint.md"
    assert checkpoint.is_file(), out[-3000:]
    text = checkpoint.read_text()
    assert fenced_lines(checkpoint) == []
    summary = json.loads((REPORTS / run_id / "summary.json").read_text())
    assert summary["status"] == "FAILED"
    assert summary["inventory_host"] == "lab-vps"
    assert_checkpoint(
        text, summary, summary["failure"]["phase"], "ssh-lost-mid-step", "UNREACHABLE!"
    )
    assert summary["failure"]["phase"] in {"classify", "views"}
    assert summary["failure"]["outcome"].startswith("unknown")
    # The classification had committed before the link died: the checkpoint counts it, or,
    # when the link died before its result came back, names it as the step of unknown outcome.
    said = summary["failure"]["committed_before"]
    assert "the classification of 39 collections (reversible)" in said or (
        summary["failure"]["step"] == "Stage and run 01_classify.sql"
    ), summary["failure"]
    assert "The failing step itself: unknown" in text
    # The lease stayed on the VPS; the checkpoint's next command (read back, breaking this
    # run's lease) goes through.
    assert json.loads(LOCK_PATH.read_text())["run_id"] == run_id
    command = summary["failure"]["next"]
    assert (
        command == f"ansible-playbook stage2.yml --tags dryrun -e birth_stage2_break_lock={run_id}"
    )
    rc, back = play(*command.split()[2:])
    assert rc == 0, back[-3000:]
    assert not LOCK_PATH.exists()
