"""The report phase and the audit trail on the lab.

A full run through bin/stage2 (ansible-runner) on the pristine lab, with a random database
password set for the run: the checkpoint reproduces the hand-written report's figures, each
figure is the summary's, the numbered evidence is there, the runner kept the run's events,
stdout and exit status, and the password is in no file of the run. Then the knowledge-base
upload: exactly one birth, accepted by the guard; a second birth fails the play and is
rolled back. Last, the same unchanged playbooks on the hard-cases dataset write that
dataset's own figures.

BIRTH_LAB_DB=<db> runs against another lab database (its own staging root), beside other
users of the default lab.
"""

# The SQL below is built from the lab's own names and fixed test values, never from input.
# ruff: noqa: S608

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import LAB_DB, REPO, lab_env, lab_playbook, run_psql

DEFAULT_DB = "birth_lab"
ISOLATED = LAB_DB != DEFAULT_DB
STAGING_ROOT = (
    f"/opt/incomex/docs/mcp-writes-{LAB_DB}" if ISOLATED else "/opt/incomex/docs/mcp-writes"
)
STAGE2_ARGS = (
    ["-e", f"birth_stage2_db_name={LAB_DB}", "-e", f"birth_stage2_staging_root={STAGING_ROOT}"]
    if ISOLATED
    else []
)
RESET = ["playbooks/lab.yml", "-e", "lab_action=reset"] + (
    ["-e", f"lab_db_name={LAB_DB}", "-e", "lab_reset_vps=false"] if ISOLATED else []
)
HARD_DB = "birth_hard_report"
HARD_FIXTURE = REPO / "tests" / "fixtures" / "hardcases.sql"
SECRET = f"pw-{secrets.token_hex(16)}"

# The hand-written checkpoint's figures (../shared/seed/checkpoint-birth-stage2-qt001.txt).
REPORT_DELTAS = [
    ("dot_domain_rules", 67),
    ("apr_approvals", 42),
    ("normative_relations", 18),
    ("apr_action_types", 6),
    ("field_type_equivalences", 4),
]
SECTIONS = [
    "Outcome",
    "What was applied (live, reversible, birth-neutral)",
    "What was deliberately NOT done (kept for T2 / owner)",
    "Dry-run (full, 39 eligible)",
    "Apply rehearsal (BEGIN..ROLLBACK, committed nothing)",
    "Verification (read-back)",
    "Key facts (carry forward)",
    "Artifacts",
    "Next macro",
]


def n(value: int) -> str:
    return f"{value:,}"


def sql(text: str, db: str = LAB_DB) -> list[str]:
    return [line for line in run_psql(text, db=db).stdout.splitlines() if line]


def births(db: str = LAB_DB) -> dict[str, int]:
    rows = sql("SELECT collection_name, count(*) FROM birth_registry GROUP BY 1", db=db)
    return {c: int(k) for c, k in (r.split("\t") for r in rows)}


def stage2_runner(
    *args: str, target: list[str] = STAGE2_ARGS
) -> tuple[subprocess.CompletedProcess, str]:
    """bin/stage2 with the lab's environment; (process, run id it printed)."""
    env = lab_env()
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [str(REPO / "bin" / "stage2"), *args, *target],
        cwd=REPO,
        env=env,
        text=True,
        capture_output=True,
        timeout=900,
    )
    found = re.search(r"bin/stage2: run (\S+);", proc.stdout)
    assert found, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, found.group(1)


def read_run(run_id: str) -> tuple[Path, str, dict]:
    run_dir = REPO / "reports" / run_id
    summary = json.loads((run_dir / "summary.json").read_text())
    return run_dir, (run_dir / "00_checkpoint.md").read_text(), summary


def check_checkpoint_is_the_summary(md: str, s: dict, births_table: str = "birth_registry") -> None:
    """Every figure the checkpoint states is the run's summary's (any dataset)."""
    ident, dr, reh = s["identity"], s["dryrun"], s["rehearsal"]
    after = s["counters"]["after"]
    assert (
        f"Macro net births to `{births_table}` = {s['births']['after'] - s['births']['before']}"
        in md
    )
    assert f"({ident['resolvable_after']}/{ident['required_with_table']})" in md
    assert (
        f"Identity classification of {len(ident['classified'])} of {ident['blockers']} blockers"
        in md
    )
    kinds = [v["kind"] for v in ident["classified"].values()]
    assert f"({kinds.count('column')} `column`, {kinds.count('synthetic_id')} `synthetic_id`)" in md
    assert (
        f"Resolvable identity {ident['resolvable_before']} → {ident['resolvable_after']} "
        f"of {ident['required_with_table']}"
    ) in md
    assert f"{len(ident['needs_owner'])} NEEDS_OWNER blockers left unclassified" in md
    for collection in [*ident["needs_owner"], *ident["no_table_required"]]:
        assert f"`{collection}`" in md
    nonzero = {c: v["expected_delta"] for c, v in dr["collections"].items() if v["expected_delta"]}
    assert f"## Dry-run (full, {dr['scope']} eligible)" in md
    total = n(dr["total_delta"])
    assert f"{len(nonzero)} collections with non-zero delta = {total} expected new births" in md
    for collection, delta in nonzero.items():
        assert f"`{collection}` {n(delta)}" in md
    assert f"applied delta = {n(reh['pass1'])}" in md
    assert f"Pass-2 rerun → {n(reh['pass2'])}" in md
    assert f"births restored to {n(reh['births_after_rollback'])}" in md
    assert f"`{births_table}` {n(after['births'])} (macro net" in md
    ledger = after["ledger"]
    assert f"ledger planned {ledger.get('planned', 0)} / done {ledger.get('done', 0)}" in md
    for view, g in s["guards"].items():
        assert f"| `{view}` | {g['passed']} | {g['total']} |" in md
    assert s["evidence"]["sha256"] in md
    if s["decision"]["status"] == "NOT_READY":
        assert "SAFE_APPLY_DECISION_MADE (" in md
    for name in s["report"]["staged_sql"]:
        if not re.search(r"\.(verify|revert)\.sql$", name):
            assert f"`{name.removesuffix('.sql')}`" in md


@pytest.fixture(scope="module")
def full_run():
    """The pristine lab, a full run through bin/stage2 with a password variable set."""
    lab_playbook(*RESET)
    before = births()
    proc, run_id = stage2_runner("-e", f"birth_stage2_db_password={SECRET}")
    assert proc.returncode == 0, proc.stdout[-4000:]
    run_dir, md, summary = read_run(run_id)
    yield proc, run_id, run_dir, md, summary, before
    lab_playbook(*RESET)


def test_checkpoint_reproduces_the_hand_written_report(full_run):
    _, _, _, md, _, before = full_run
    assert md.startswith("# Checkpoint — Birth Stage 2 QT-001")
    assert [m for m in re.findall(r"(?m)^## (.+)$", md)] == SECTIONS
    status = md.splitlines()[2]
    assert "Status: PARTIAL" in status
    assert "Mode: EXECUTION" in status
    assert "Live mutation: YES — additive + reversible + birth-neutral" in status
    assert "Macro net births to `birth_registry` = 0" in status
    assert sum(before.values()) == 1_210_868
    for state in (
        "`BIRTH_GATEWAY_SSOT_RUNTIME_CONTRACT_LIVE`",
        "`SHARED_POLICY_IDENTITY_REGISTER_FOUNDATION_READY`",
        "`QT001_IDENTITY_CLASSIFIED (70/74)`",
        "`METADATA_PREFLIGHT_READY`",
        "`PLAN_APPLY_DOT_SOURCE_READY`",
        "`BACKFILL_DRYRUN_PROVEN (137)`",
        "`SAFE_APPLY_DECISION_MADE (ACTION_READY pending T2 + owner permit)`",
    ):
        assert state in md.split("## What was applied")[0], state
    assert "Identity classification of 39 of 43 blockers" in md
    assert "(7 `column`, 32 `synthetic_id`)" in md
    assert "Resolvable identity 31 → 70 of 74" in md
    assert "5 `birth_backfill_ledger` PLAN rows (status=planned, dry_run=true)" in md
    assert "25 of 25 additive Stage 2 views present" in md
    assert (
        "No real backfill of the 137 births. Proven safe via rehearsal (committed nothing)." in md
    )
    assert "4 NEEDS_OWNER blockers left unclassified" in md
    assert "2 no-table REQUIRED (`iu_staging_payload`, `iu_staging_record`)" in md
    deltas = ", ".join(f"`{c}` {d}" for c, d in REPORT_DELTAS)
    assert f"5 collections with non-zero delta = 137 expected new births: {deltas}." in md
    assert "34 others already covered (delta 0) or empty. Duplicate risk 0" in md
    assert "applied delta = 137 (plan 137). Pass-2 rerun → 0 (idempotent)." in md
    assert "ROLLBACK → births restored to 1,210,868 (0 leaked)." in md
    assert (
        "`birth_registry` 1,210,868 (macro net 0) · `apr_approvals` 42 · open permits 0 · "
        "ledger planned 5 / done 0." in md
    )
    assert "Blocker: independent T2 + owner permit; zero eng blocker." in md
    assert "`T2_REVIEW_STAGE2_BEFORE_APPLY` → `BIRTH_STAGE2_QT001_APPLY_IF_READY`" in md
    assert "`BIRTH_STAGE2_METADATA_REPAIR_CONTINUE` (4 needs-owner + 2 no-table)" in md


def test_every_checkpoint_figure_is_the_summarys(full_run):
    _, _, _, md, summary, _ = full_run
    check_checkpoint_is_the_summary(md, summary)
    guards = summary["guards"]
    assert guards and all(
        g["passed"] == g["total"] for v, g in guards.items() if "qt001_no_go" not in v
    )
    assert summary["report"]["status"] == "PARTIAL"
    assert summary["report"]["upload"] is None


def test_numbered_evidence_of_each_phase(full_run):
    _, _, run_dir, _, summary, _ = full_run
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == [
        "00_checkpoint.md",
        "01_preflight.md",
        "02_classify.md",
        "03_views.md",
        "04_plan.md",
        "05_dryrun.md",
        "06_rehearsal.md",
        "07_decision.md",
        "08_verify.md",
        "10_staged_sql.md",
        "10_staged_sql.sql",
        "runner",
        "summary.json",
    ]
    assert summary["report"]["artifacts"] == [n for n in names if n[:2].isdigit()]
    bundle = (run_dir / "10_staged_sql.sql").read_text()
    for name in summary["report"]["staged_sql"]:
        assert f"-- ==== {name} (sha256 " in bundle
    assert "| `apr_approvals` |" in (run_dir / "05_dryrun.md").read_text()


def test_runner_keeps_events_stdout_and_exit_status(full_run):
    proc, run_id, run_dir, _, _, _ = full_run
    runner = run_dir / "runner"
    assert (runner / "rc").read_text().strip() == "0"
    assert (runner / "status").read_text().strip() == "successful"
    assert "PLAY RECAP" in (runner / "stdout").read_text()
    events = [json.loads(p.read_text()) for p in (runner / "job_events").glob("*.json")]
    tasks = {e["event_data"].get("task") for e in events if e["event"] == "runner_on_ok"}
    assert {
        "Record preflight",
        "Record report",
        "Write the checkpoint and the evidence files (one call; 00_checkpoint.md, 01_... 10_...)",
    } <= tasks
    command = json.loads((runner / "command").read_text())["command"]
    assert f"birth_stage2_run_id={run_id}" in command
    assert f"artifacts:   {run_dir}/" in proc.stdout
    assert json.loads((runner / "redacted_vars.json").read_text()) == {
        "redacted": ["birth_stage2_db_password"]
    }


def test_the_password_is_in_no_artifact(full_run):
    _, _, run_dir, _, _, _ = full_run
    leaked = [
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file() and SECRET.encode() in p.read_bytes()
    ]
    assert leaked == []


def test_bin_stage2_exits_with_the_playbooks_code():
    proc, run_id = stage2_runner("--tags", "dryrun", "-e", "birth_stage2_container=")
    assert proc.returncode == 2
    assert (REPO / "reports" / run_id / "runner" / "rc").read_text().strip() == "2"


# --------------------------------------------------------------------------- upload


def _docs() -> int:
    return int(sql("SELECT count(*) FROM knowledge_documents")[0])


def test_upload_births_exactly_one_row_and_the_guard_accepts_it(full_run):
    before, docs = births(), _docs()
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    lab_playbook(
        "stage2.yml", "--tags", "report", "-e", "birth_stage2_report_upload=true",
        "-e", f"birth_stage2_run_id={run_id}", *STAGE2_ARGS,
    )  # fmt: skip
    after = births()
    assert {
        c: after.get(c, 0) - before.get(c, 0) for c in after if after.get(c, 0) != before.get(c, 0)
    } == {"knowledge_documents": 1}
    assert _docs() == docs + 1
    run_dir, _, summary = read_run(run_id)
    upload = summary["report"]["upload"]
    assert upload["births"] == 1 and upload["collection"] == "knowledge_documents"
    title = sql(f"SELECT title FROM knowledge_documents WHERE id = {int(upload['document_id'])}")[0]
    assert run_id in title
    assert summary["births"]["after"] - summary["births"]["before"] == 1
    assert (run_dir / "11_upload.md").exists()


def test_a_second_birth_fails_the_play_and_is_rolled_back(full_run):
    sql(
        "CREATE FUNCTION public.test_report_twice() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN INSERT INTO public.birth_registry (collection_name, entity_code, birth_source) "
        "VALUES (TG_TABLE_NAME, TG_TABLE_NAME || '::twice::' || NEW.id, 'gateway'); "
        "RETURN NULL; END $$; "
        "CREATE TRIGGER zz_test_report_twice AFTER INSERT ON knowledge_documents "
        "FOR EACH ROW EXECUTE FUNCTION public.test_report_twice();"
    )
    try:
        before, docs = births(), _docs()
        proc = lab_playbook(
            "stage2.yml",
            "--tags",
            "report",
            "-e",
            "birth_stage2_report_upload=true",
            *STAGE2_ARGS,
            check=False,
        )
        assert proc.returncode != 0
        assert "birth leak during report upload" in proc.stdout
        assert births() == before
        assert _docs() == docs
    finally:
        sql(
            "DROP TRIGGER zz_test_report_twice ON knowledge_documents; "
            "DROP FUNCTION public.test_report_twice();"
        )


# --------------------------------------------------------------------------- another dataset


def test_another_dataset_writes_its_own_figures():
    lab_playbook(
        "playbooks/lab.yml",
        "-e",
        f"lab_db_name={HARD_DB}",
        "-e",
        f"lab_fixture={HARD_FIXTURE}",
        "-e",
        "lab_reset_vps=false",
    )
    lab_playbook(
        "playbooks/lab.yml", "-e", "lab_action=reset", "-e", f"lab_db_name={HARD_DB}",
        "-e", "lab_reset_vps=false",
    )  # fmt: skip
    proc, run_id = stage2_runner(
        target=[
            "-e",
            f"birth_stage2_db_name={HARD_DB}",
            "-e",
            f"birth_stage2_staging_root={STAGING_ROOT}",
        ]
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    _, md, summary = read_run(run_id)
    check_checkpoint_is_the_summary(md, summary)
    assert summary["births"]["before"] == sum(births(HARD_DB).values())
    for lab_figure in ("1,210,868", "(70/74)", "(137)", "39 eligible"):
        assert lab_figure not in md
    assert summary["dryrun"]["no_go"], "the hard cases hold no-go collections"
    for collection in summary["dryrun"]["no_go"]:
        assert f"`{collection}`" in md
