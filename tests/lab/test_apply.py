"""The gated apply on the lab, through the real playbooks: review, permit, apply, refusals,
an interrupted apply and its resume.

One full Stage 2 run signed by alice's key, bob's signed approved review and carol's signed
permit make the "ready" state, kept as a database template (<lab db>_apply_ready); every
test starts from a copy of it, so the tests do not depend on each other's order. The lab is
reset at the end and the template dropped. Operators sign with the lab's keys
(.lab/operators/<name>/id_ed25519, made by playbooks/lab.yml).

BIRTH_LAB_DB=<db> (a lab database made with `ansible-playbook playbooks/lab.yml -e
lab_db_name=<db>`) runs them against that database with its own staging root and run lock
(/opt/incomex/docs/mcp-writes-<db>), beside other users of the default lab;
BIRTH_APPLY_TEST_ARGS adds extra arguments to every playbook.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import LAB_CONTAINER, LAB_DB, REPO, lab_env, lab_playbook, psql_prefix, run_psql
from tests.lab.labrun import LOCK_PATH, Writer
from tests.test_runbook import squash

READY_DB = f"{LAB_DB}_apply_ready"
ISOLATED = LAB_DB != "birth_lab"
STAGING = f"/opt/incomex/docs/mcp-writes-{LAB_DB}"
EXTRA = [
    "-e", f"lab_db_name={LAB_DB}",
    *(["-e", f"birth_stage2_staging_root={STAGING}"] if ISOLATED else []),
    *shlex.split(os.environ.get("BIRTH_APPLY_TEST_ARGS", "")),
]  # fmt: skip
RESET_VPS = ["-e", "lab_reset_vps=false"] if ISOLATED else []
OPERATORS = REPO / ".lab" / "operators"
PLAN = "QT-001"
SCOPE = "birth-stage2-qt001-apply"
BIRTHS_BEFORE = 1_210_868
BIRTHS_AFTER = 1_211_005
REPORT_DELTAS = {
    "apr_action_types": 6,
    "apr_approvals": 42,
    "dot_domain_rules": 67,
    "field_type_equivalences": 4,
    "normative_relations": 18,
}
SAFETY_VIEWS = (
    "v_birth_stage2_dependency_guard",
    "v_birth_stage2_no_worse_guard",
    "v_birth_stage2_metadata_no_go",
    "v_birth_stage2_required_no_go",
    "v_birth_stage2_cross_layer_guard",
    "v_birth_stage2_rp_object_truth_guard",
    "v_birth_qt001_rerun_delta_guard",
)
# The advisory lock every Stage 2 psql session takes (module_utils/birth_stage2_psql.py).
LOCK_KEY = int.from_bytes(hashlib.sha256(b"birth_stage2").digest()[:8], "big", signed=True)
NOTHING_WRITTEN = "nothing was written"
# Batches of one row each, that wait on a held lock as long as the test holds it.
ONE_ROW_BATCHES = [
    "-e", "birth_stage2_apply_batch_target_ms=0", "-e", "birth_stage2_apply_batch_min=1",
    "-e", "birth_stage2_apply_batch_lock_timeout=10min",
]  # fmt: skip
SCHEMA = json.loads((REPO / "docs" / "schema" / "summary.schema.json").read_text())


# ---- plumbing -----------------------------------------------------------------------------


def new_run_id(tag: str) -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + tag


def playbook(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return lab_playbook(*args, *EXTRA, check=check)


def apply(confirm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return playbook(
        "stage2.yml", "--tags", "apply", "-e", f"birth_stage2_apply_confirm={confirm}", *args,
        check=check,
    )  # fmt: skip


def key(name: str) -> list[str]:
    """Sign as this lab operator (alice dry-runs, bob reviews, carol permits)."""
    return ["-e", f"birth_stage2_signing_key={OPERATORS / name / 'id_ed25519'}"]


def dryrun(author: str) -> dict:
    run_id = new_run_id("dryrun")
    playbook("stage2.yml", "--tags", "dryrun", "-e", f"birth_stage2_run_id={run_id}", *key(author))
    return summary(run_id)


def review(run_id: str, sha: str, reviewer: str, check: bool = True, label: str | None = None):
    return playbook(
        "playbooks/review.yml", *key(reviewer),
        "-e", f"birth_stage2_reviewer={label or reviewer}",
        "-e", "birth_stage2_review_verdict=approved",
        "-e", f"birth_stage2_review_evidence={sha}", "-e", f"birth_stage2_review_run={run_id}",
        check=check,
    )  # fmt: skip


def open_permit(sha: str, owner: str = "carol", expires: str = "2h", check: bool = True):
    return playbook(
        "playbooks/permit.yml", "-e", "birth_stage2_permit_action=open", *key(owner),
        "-e", f"birth_stage2_permit_evidence={sha}",
        "-e", f"birth_stage2_permit_expires_in={expires}",
        check=check,
    )  # fmt: skip


def summary(run_id: str) -> dict:
    return json.loads((REPO / "reports" / run_id / "summary.json").read_text())


def sql(text: str, db: str = LAB_DB) -> list[tuple[str, ...]]:
    out = run_psql(text, db=db).stdout
    return [tuple(line.split("\t")) for line in out.splitlines() if line]


def admin(text: str) -> None:
    run_psql(text, db="postgres")


def save_ready() -> None:
    admin(
        f'DROP DATABASE IF EXISTS "{READY_DB}" WITH (FORCE);\n'
        f'CREATE DATABASE "{READY_DB}" TEMPLATE "{LAB_DB}" STRATEGY FILE_COPY;\n'
    )


def restore_ready() -> None:
    admin(
        f'DROP DATABASE IF EXISTS "{LAB_DB}" WITH (FORCE);\n'
        f'CREATE DATABASE "{LAB_DB}" TEMPLATE "{READY_DB}" STRATEGY FILE_COPY;\n'
    )


def state() -> dict:
    """What an apply may change: births, the plan's ledger rows, the apply scope's permits."""
    names = ", ".join(f"'{c}'" for c in REPORT_DELTAS)
    return {
        "births": int(sql("SELECT count(*) FROM birth_registry")[0][0]),
        "per_collection": dict(
            sql(
                "SELECT collection_name, count(*) FROM birth_registry "  # noqa: S608
                f"WHERE collection_name IN ({names}) GROUP BY 1 ORDER BY 1"
            )
        ),
        "ledger": sql(
            "SELECT collection_name, status, expected_delta, applied_delta, permit_id, dry_run "  # noqa: S608
            f"FROM birth_backfill_ledger WHERE plan_code = '{PLAN}' ORDER BY collection_name"
        ),
        "permits": sql(
            "SELECT id, status, consumed_by IS NOT NULL FROM governance_permits "  # noqa: S608
            f"WHERE scope = '{SCOPE}' ORDER BY id"
        ),
    }


def refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-4000:]}"
    return out


def terminate(application_name: str) -> None:
    sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "  # noqa: S608
        f"WHERE application_name = '{application_name}'"
    )


def background_psql(script: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*psql_prefix(LAB_DB), "-X", "-q", "-v", "ON_ERROR_STOP=1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=lab_env(),
    )
    proc.stdin.write(script)
    proc.stdin.flush()
    return proc


def wait_for(query: str, timeout: float = 90.0) -> list[tuple[str, ...]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = sql(query)
        if rows:
            return rows
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for: {query}")


def recap_changed(proc: subprocess.CompletedProcess) -> int:
    line = next(x for x in proc.stdout.splitlines() if x.startswith("lab-vps") and "changed=" in x)
    return int(line.split("changed=")[1].split()[0])


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _pristine_lab_per_module():
    """tests/lab/conftest.py's reset, of this module's lab database (BIRTH_LAB_DB)."""
    playbook("playbooks/lab.yml", "-e", "lab_action=reset", *RESET_VPS)


@dataclass
class Ready:
    run_id: str
    sha: str
    reviews: list[subprocess.CompletedProcess]
    permits: list[subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def ready():
    """Full Stage 2 run signed by alice, bob's approved review, carol's open permit; kept as a
    template."""
    run_id = new_run_id("dryrun")
    playbook("stage2.yml", "-e", f"birth_stage2_run_id={run_id}", *key("alice"))
    s = summary(run_id)
    assert s["evidence"]["author"] == "alice"
    assert s["evidence"]["recorded"] is True
    assert s["decision"]["status"] == "NOT_READY"
    reviews = [review(run_id, s["evidence"]["sha256"], "bob") for _ in range(2)]
    permits = [open_permit(s["evidence"]["sha256"]) for _ in range(2)]
    save_ready()
    yield Ready(run_id, s["evidence"]["sha256"], reviews, permits)
    playbook("playbooks/lab.yml", "-e", "lab_action=reset", *RESET_VPS)
    admin(f'DROP DATABASE IF EXISTS "{READY_DB}" WITH (FORCE);')


@pytest.fixture(scope="module")
def applied(ready):
    """The uninterrupted apply from the ready state, and a second apply after it."""
    restore_ready()
    before = state()
    run_id = new_run_id("apply")
    first = apply(ready.run_id, "-e", f"birth_stage2_run_id={run_id}")
    after = state()
    second = apply(ready.run_id)
    after_second = state()
    recorded = {
        "dot_tools": dict(sql("SELECT code, status FROM dot_tools ORDER BY code")),
        "plan_rows": sql(
            "SELECT collection, expected, applied, status FROM fn_dot_birth_qt001_plan()"
        ),
        "rerun_guard": sql(
            "SELECT count(*) FILTER (WHERE NOT ok), count(*) FROM v_birth_qt001_rerun_delta_guard"
        ),
        "open_permits": sql(
            f"SELECT count(*) FROM governance_permits WHERE scope = '{SCOPE}' "  # noqa: S608
            "AND status = 'open' AND expires_at > now()"
        ),
    }
    rollback = playbook("stage2.yml", "--tags", "rollback", check=False)
    return {
        "before": before,
        "after": after,
        "first": first,
        "summary": summary(run_id),
        "run_id": run_id,
        "second": second,
        "after_second": after_second,
        "rollback": rollback,
        "after_rollback": state(),
        **recorded,
    }


# ---- the happy path ---------------------------------------------------------------------------


def test_apply_births_exactly_the_plan(applied):
    s, before, after = applied["summary"], applied["before"], applied["after"]
    assert before["births"] == BIRTHS_BEFORE
    assert after["births"] == BIRTHS_AFTER
    assert (s["births"]["before"], s["births"]["after"]) == (BIRTHS_BEFORE, BIRTHS_AFTER)
    # Every birth of the run is Stage 2's own (the lab is quiet: nobody else births).
    assert s["births"]["stage2"] == REPORT_DELTAS and s["births"]["by_others"] == {}
    grown = {
        c: int(after["per_collection"].get(c, 0)) - int(before["per_collection"].get(c, 0))
        for c in REPORT_DELTAS
    }
    assert grown == REPORT_DELTAS
    assert s["phases"] == ["preflight", "apply"]
    jsonschema.validate(s, SCHEMA)


def test_apply_ledger_done_and_permit_consumed(applied):
    after, s = applied["after"], applied["summary"]
    permit_ids = {row[4] for row in after["ledger"]}
    assert len(permit_ids) == 1
    (permit_id,) = permit_ids
    assert [(c, st, int(e), int(a), d) for c, st, e, a, _, d in after["ledger"]] == [
        (c, "done", n, n, "f") for c, n in sorted(REPORT_DELTAS.items())
    ]
    consumed = sql(
        "SELECT status, consumed_by, consumed_at IS NOT NULL FROM governance_permits "  # noqa: S608
        f"WHERE id = {permit_id}"
    )
    assert consumed == [("consumed", applied["run_id"], "t")]
    assert applied["open_permits"] == [("0",)]
    ap = s["apply"]
    assert ap["permit_id"] == int(permit_id)
    assert ap["rerun_total"] == 0
    assert ap["mode"] == "fresh"
    for c, n in REPORT_DELTAS.items():
        assert ap[c]["expected"] == ap[c]["applied"] == n
        assert ap[c]["status"] == "done"
        assert ap[c]["batches"] >= 1


def test_apply_rerun_delta_is_zero_and_guards_green(applied):
    s = applied["summary"]
    assert s["dryrun"]["total_delta"] == 0
    for c in REPORT_DELTAS:
        assert s["dryrun"]["collections"][c]["expected_delta"] == 0
    for view in SAFETY_VIEWS:
        g = s["guards"][view]
        assert g["passed"] == g["total"] > 0, view
    assert applied["rerun_guard"] == [("0", str(len(REPORT_DELTAS)))]


def test_apply_sources_recorded_and_old_tools_still_frozen(applied):
    assert applied["dot_tools"] == {
        "dot-birth-backfill": "frozen",
        "dot-birth-qt001-apply": "source_only",
        "dot-birth-qt001-plan": "active",
        "dot-birth-trigger-setup": "frozen",
        "dot-kb-upload": "active",
        "dot-registry-audit": "active",
    }
    assert applied["plan_rows"] == [
        (c, str(n), str(n), "done") for c, n in sorted(REPORT_DELTAS.items())
    ]


def test_second_apply_changes_nothing_without_a_permit(applied):
    second = applied["second"]
    assert second.returncode == 0
    assert recap_changed(second) == 0
    assert "Nothing left to apply" in second.stdout
    assert applied["after_second"] == applied["after"]


def test_rollback_refused_after_the_apply(applied):
    refused(applied["rollback"], "rollback refused")
    assert applied["after_rollback"] == applied["after"]


# ---- refusals: each stops before writing and names its gate --------------------------------


def test_review_and_permit_are_idempotent(ready):
    assert [recap_changed(p) for p in ready.reviews] == [1, 0]
    assert "Already recorded, nothing written" in ready.reviews[1].stdout
    assert [recap_changed(p) for p in ready.permits] == [1, 0]
    assert "Already open, nothing opened" in ready.permits[1].stdout
    restore_ready()
    assert sql(
        "SELECT count(*) FROM governance_reviews WHERE reviewer = 'bob';\n"  # noqa: S608
        f"SELECT count(*) FROM governance_permits WHERE scope = '{SCOPE}' AND status = 'open';"
    ) == [("1",), ("1",)]


def test_review_refuses_the_author(ready):
    restore_ready()
    proc = review(ready.run_id, ready.sha, "alice", check=False)
    refused(proc, "self-review", NOTHING_WRITTEN)
    assert sql("SELECT count(*) FROM governance_reviews WHERE reviewer = 'alice'") == [("0",)]


def test_review_refuses_evidence_not_of_that_run(ready):
    proc = review(ready.run_id, "0" * 64, "bob", check=False)
    refused(proc, "is not the evidence of run", NOTHING_WRITTEN)


def test_apply_refuses_without_an_open_permit(ready):
    restore_ready()
    playbook("playbooks/permit.yml", "-e", "birth_stage2_permit_action=revoke")
    before = state()
    proc = apply(ready.run_id, check=False)
    refused(proc, NOTHING_WRITTEN, "open_permit: permit", "playbooks/permit.yml")
    assert state() == before


def test_apply_ignores_a_self_review_row(ready):
    restore_ready()
    sql(
        "DELETE FROM governance_reviews;\n"  # noqa: S608
        "INSERT INTO governance_reviews (subject, author, reviewer, verdict, evidence_sha256) "
        f"VALUES ('birth-stage2-qt001', 'alice', 'alice', 'approved', '{ready.sha}');"
    )
    assert sql("SELECT status FROM v_birth_qt001_apply_decision") == [("NOT_READY",)]
    before = state()
    proc = apply(ready.run_id, check=False)
    refused(
        proc, NOTHING_WRITTEN, "approved_independent_review", "1 self-review(s)",
        "playbooks/review.yml",
    )  # fmt: skip
    assert "open_permit" not in proc.stdout
    assert state() == before


def test_apply_refuses_a_stale_review(ready):
    restore_ready()
    # A birth lost after bob's review: the collection's delta, and so the evidence, change.
    # (A row the application adds, born by its trigger, changes neither: the evidence holds
    # what the apply will do, not the live row counts.)
    sql("INSERT INTO field_type_equivalences (title) VALUES ('arrived after the review');")
    assert dryrun("alice")["evidence"]["sha256"] == ready.sha
    sql(
        "DELETE FROM birth_registry WHERE id = (SELECT max(id) FROM birth_registry"
        " WHERE collection_name = 'field_type_equivalences')"
    )
    fresh = dryrun("alice")
    assert fresh["evidence"]["sha256"] != ready.sha
    before = state()
    # A review of the old evidence is refused as stale.
    proc = review(ready.run_id, ready.sha, "bob", check=False)
    refused(proc, NOTHING_WRITTEN, "is stale", fresh["evidence"]["sha256"])
    proc = apply(fresh["run_id"], check=False)
    refused(proc, NOTHING_WRITTEN, "approved_independent_review", "(stale)", "playbooks/review.yml")
    # Confirming the reviewed (now stale) dry-run names both hashes.
    proc = apply(ready.run_id, check=False)
    refused(proc, NOTHING_WRITTEN, ready.sha, fresh["evidence"]["sha256"], "the data changed since")
    assert state() == before


def test_apply_refuses_a_no_go_collection(ready):
    restore_ready()
    # A row of dot_domain_rules whose code is NULL (loaded with its triggers off): unbirthable.
    sql(
        "ALTER TABLE dot_domain_rules ALTER COLUMN rule_code DROP NOT NULL;\n"
        "SET session_replication_role = replica;\n"
        "INSERT INTO dot_domain_rules (rule_code, title) VALUES (NULL, 'no code');"
    )
    fresh = dryrun("alice")
    assert fresh["dryrun"]["collections"]["dot_domain_rules"]["no_go"] == "unbirthable_rows"
    review(fresh["run_id"], fresh["evidence"]["sha256"], "bob")
    before = state()
    proc = apply(fresh["run_id"], check=False)
    out = refused(proc, NOTHING_WRITTEN, "no_collection_no_go:dot_domain_rules", "unbirthable")
    assert "approved_independent_review" not in out
    assert state() == before


def test_apply_refuses_while_another_run_holds_the_lock(ready):
    restore_ready()
    holder = background_psql(
        "SET application_name = 'apply-test-lock-holder';\n"
        f"SELECT pg_advisory_lock({LOCK_KEY});\nSELECT pg_sleep(600);\n"
    )
    try:
        wait_for(
            "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND a.application_name = 'apply-test-lock-holder'",
            timeout=30,
        )
        before = state()
        started = time.monotonic()
        proc = apply(ready.run_id, check=False)
        elapsed = time.monotonic() - started
        refused(proc, "another Stage 2 run is in progress")
        assert elapsed < 30, f"refusal took {elapsed:.1f} s"
        assert state() == before
    finally:
        terminate("apply-test-lock-holder")
        holder.kill()
        holder.wait()


# ---- interruption -------------------------------------------------------------------------------


def background_apply(confirm: str, run_id: str, *args: str) -> subprocess.Popen:
    """``stage2.yml --tags apply`` running in its own process group (as from a terminal)."""
    cmd = [
        str(REPO / ".venv" / "bin" / "ansible-playbook"), "stage2.yml", "--tags", "apply",
        "-e", f"birth_stage2_apply_confirm={confirm}", "-e", f"birth_stage2_run_id={run_id}",
        *args, *EXTRA,
    ]  # fmt: skip
    env = lab_env()
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def hold_birth(app: str, code: str, collection: str = "dot_domain_rules") -> subprocess.Popen:
    """A session named ``app`` holding an uncommitted birth of ``code``: a batch that reaches
    it waits for its lock."""
    return background_psql(
        f"SET application_name = '{app}';\nBEGIN;\n"
        "INSERT INTO birth_registry (collection_name, entity_code, birth_source) "
        f"VALUES ('{collection}', '{code}', 'backfill');\nSELECT pg_sleep(600);\n"
    )


def held_apply(
    confirm: str,
    run_id: str,
    app: str,
    *args: str,
    code: str = "DOTD-00000412",
    collection: str = "dot_domain_rules",
) -> tuple[subprocess.Popen, subprocess.Popen]:
    """An apply (one birth a batch) whose batch that reaches ``code`` (by default the last
    missing dot_domain_rules code) waits on an uncommitted birth of it, held by a session
    named ``app``: the apply is held between two batches. Returns (the held session, the
    running playbook)."""
    blocker = hold_birth(app, code, collection)
    play = background_apply(
        confirm, run_id, "-e", "birth_stage2_apply_batch_size=1", *ONE_ROW_BATCHES, *args
    )
    return blocker, play


def test_interrupted_apply_resumes_to_the_same_end_state(ready, applied):
    restore_ready()
    # The apply is held at the batch that reaches an uncommitted birth; its session is then
    # killed, as a dead link or an operator would.
    run_id = new_run_id("killed")
    blocker, play = held_apply(ready.run_id, run_id, "apply-test-blocker")
    try:
        wait_for(
            "SELECT 1 FROM birth_backfill_ledger WHERE collection_name = 'dot_domain_rules' "
            "AND status = 'applying'"
        )
        (pid,) = wait_for(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "  # noqa: S608
            f"AND application_name = 'birth_stage2:{run_id}'"
        )[0]
        sql(f"SELECT pg_terminate_backend({pid})")
        out, _ = play.communicate(timeout=120)
    finally:
        terminate("apply-test-blocker")
        blocker.kill()
        blocker.wait()
        if play.poll() is None:
            play.kill()
    assert play.returncode != 0, out[-3000:]
    assert "terminating connection" in out

    mid = state()
    ledger = {row[0]: row for row in mid["ledger"]}
    applying = ledger["dot_domain_rules"]
    assert applying[1] == "applying" and 0 <= int(applying[3]) < 67
    assert {ledger[c][1] for c in ("apr_action_types", "apr_approvals")} == {"done"}
    assert {ledger[c][1] for c in ("field_type_equivalences", "normative_relations")} == {"planned"}
    assert len({row[4] for row in mid["ledger"]}) == 1  # every row linked to the one permit
    assert mid["births"] == BIRTHS_BEFORE + sum(int(row[3]) for row in mid["ledger"])
    assert [p[1] for p in mid["permits"] if p[1] in ("open", "consumed")] == ["consumed"]

    # The rerun resumes under the same (consumed) permit: no new permit, no new review.
    resumed_id = new_run_id("resume")
    apply(ready.run_id, "-e", f"birth_stage2_run_id={resumed_id}")
    assert summary(resumed_id)["apply"]["mode"] == "resume"
    assert state() == applied["after"]


def test_a_fence_bumped_mid_apply_stops_it_at_its_next_batch(ready):
    """Another run takes the lease over while the apply runs (its token, greater, reaches the
    fence table): the apply stops at its next batch, the batches before it stay committed,
    nothing is marked failed, and a fresh run (a new lease, a greater token) resumes."""
    restore_ready()
    # The apply is held between two batches while the fence moves.
    run_id = new_run_id("fenced")
    blocker, play = held_apply(ready.run_id, run_id, "apply-test-fence-blocker")
    breaker = None
    try:
        wait_for(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "  # noqa: S608
            f"AND application_name = 'birth_stage2:{run_id}'"
        )
        (token,) = wait_for(
            f"SELECT token FROM birth_stage2_fence WHERE run_id = '{run_id}'"  # noqa: S608
        )[0]
        # Another run's greater token (it waits for the held batch, which read the fence).
        breaker = background_psql(
            "SET application_name = 'apply-test-fence-breaker';\n"
            f"UPDATE birth_stage2_fence SET token = {int(token) + 1}, run_id = 'fence-breaker'"
            " WHERE lock_name = 'birth_stage2';\n"
        )
        wait_for(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND application_name = 'apply-test-fence-breaker'"
        )
        terminate("apply-test-fence-blocker")  # the held batch commits; the next one is fenced
        out, _ = play.communicate(timeout=300)
    finally:
        terminate("apply-test-fence-blocker")
        blocker.kill()
        blocker.wait()
        if breaker is not None:
            breaker.stdin.close()
            breaker.wait(timeout=60)
        if play.poll() is None:
            play.kill()
    assert play.returncode != 0, out[-3000:]
    text = squash(out).replace("''", "'")  # YAML folds and quotes the message
    assert "refused by the run fence in the database" in text, out[-4000:]
    assert f"run {run_id} with fencing token {token}" in text
    assert f"already seen run fence-breaker with token {int(token) + 1}" in text
    assert "lease was broken" in text and "(the batches before it stay)" in text

    mid = state()
    ledger = {row[0]: row for row in mid["ledger"]}
    assert "failed" not in {row[1] for row in mid["ledger"]}
    assert {ledger[c][1] for c in ("apr_action_types", "apr_approvals")} == {"done"}
    assert ledger["normative_relations"][1] in ("planned", "applying")  # stopped before the end
    assert BIRTHS_BEFORE < mid["births"] < BIRTHS_AFTER
    assert mid["births"] == BIRTHS_BEFORE + sum(int(row[3] or 0) for row in mid["ledger"])

    # A fresh run takes the lease with a new, greater token and resumes to the end state.
    resumed_id = new_run_id("resume")
    apply(ready.run_id, "-e", f"birth_stage2_run_id={resumed_id}")
    assert summary(resumed_id)["apply"]["mode"] == "resume"
    end = state()
    assert end["births"] == BIRTHS_AFTER
    assert {row[1] for row in end["ledger"]} == {"done"}
    (seen,) = sql("SELECT run_id FROM birth_stage2_fence WHERE lock_name = 'birth_stage2'")
    assert seen == (resumed_id,)


# ---- on a live system (births attributed, issue 11) ----------------------------------------


def test_apply_under_traffic_births_exactly_the_reviewed_codes(ready):
    """The application births and moves every row of a planned collection while the apply walks
    it in one-page batches, and births rows of another planned collection (the guards' counts
    judge the backfill's births, never the application's): each reviewed code is born once,
    none missed, and only Stage 2's births are judged."""
    restore_ready()
    run_id = new_run_id("apply-traffic")
    with Writer(
        insert_into="apr_approvals", update="dot_domain_rules", interval=0.02, update_all=True
    ) as writer:
        apply(
            ready.run_id,
            "-e",
            f"birth_stage2_run_id={run_id}",
            "-e",
            "birth_stage2_apply_batch_size=1",
        )
    s = summary(run_id)
    assert s["births"]["stage2"] == REPORT_DELTAS
    others = s["births"]["by_others"]
    assert set(others) == {"apr_approvals"}
    assert 0 < others["apr_approvals"] <= writer.made
    unborn = sql(
        "SELECT count(*) FROM birth_stage2_plan_codes pc WHERE NOT EXISTS (SELECT 1 FROM "
        "birth_registry b WHERE b.collection_name = pc.collection_name "
        "AND b.entity_code = pc.entity_code)"
    )
    assert unborn == [("0",)]
    # Each reviewed code has exactly one birth (the registry's key), by the backfill.
    backfilled = sql(
        "SELECT pc.collection_name, count(*) FROM birth_stage2_plan_codes pc JOIN birth_registry"
        " b ON b.collection_name = pc.collection_name AND b.entity_code = pc.entity_code"
        " WHERE b.birth_source = 'backfill' GROUP BY 1"
    )
    assert {c: int(n) for c, n in backfilled} == REPORT_DELTAS
    batches = sql(
        "SELECT count(*) FROM birth_stage2_apply_batches WHERE collection_name = 'dot_domain_rules'"
    )
    assert int(batches[0][0]) > 1


def test_a_batch_that_births_more_than_it_inserted_is_rolled_back(ready, tmp_path):
    """A trigger on the registry births an echo of every backfilled code. The playbook's
    safety guards refuse such a trigger before an apply; the procedure, CALLed directly with
    the gates open, must refuse it too: its first batch sees more births in its transaction
    than it inserted and rolls back, permit and all."""
    restore_ready()
    rendered = tmp_path / "sql"
    playbook("playbooks/render_sql.yml", "-e", f"birth_stage2_render_dir={rendered}")
    for name in ("04_dot_birth_qt001_plan_SOURCE.sql", "05_dot_birth_qt001_apply_SOURCE.sql"):
        sql("BEGIN;\n" + (rendered / name).read_text() + "\nCOMMIT;\n")
    sql(
        "CREATE FUNCTION public.test_echo_births() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        "  INSERT INTO public.birth_registry (collection_name, entity_code, birth_source)\n"
        "  VALUES ('collection_registry', NEW.entity_code || '::echo', 'gateway');\n"
        "  RETURN NEW;\n"
        "END $$;\n"
        "CREATE TRIGGER trg_test_echo AFTER INSERT ON public.birth_registry FOR EACH ROW\n"
        "  WHEN (NEW.birth_source = 'backfill') EXECUTE FUNCTION public.test_echo_births();\n"
    )
    before = state()
    permit = sql("SELECT max(id) FROM governance_permits WHERE status = 'open'")[0][0]
    proc = run_psql(
        f"CALL public.sp_dot_birth_qt001_apply('dot_domain_rules', 5000, {permit});\n",
        db=LAB_DB,
        check=False,
    )
    assert proc.returncode != 0
    assert "birth guard FAILED inside this step's own transaction" in proc.stderr, proc.stderr
    assert "nothing of it was committed" in proc.stderr
    assert state() == before


def test_apply_runs_none_of_the_functions_planted_in_public(ready):
    """Shadows of every built-in the SQL calls, planted by an application role: the apply (the
    procedure's dynamic SQL included) births the plan and none of them runs."""
    restore_ready()
    sql((REPO / "tests" / "fixtures" / "shadow_builtins.sql").read_text())
    before = state()
    proc = apply(ready.run_id, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "HIJACKED" not in out, out[-4000:]
    assert state()["births"] == before["births"] + sum(REPORT_DELTAS.values())


# ---- steering a running apply (playbooks/apply_control.yml, playbooks/apply_status.yml) --------


def control(action: str, reason: str = "", check: bool = True) -> subprocess.CompletedProcess:
    extra = {"birth_stage2_apply_control": action, "birth_stage2_apply_control_reason": reason}
    return playbook("playbooks/apply_control.yml", "-e", json.dumps(extra), check=check)


def stop(play: subprocess.Popen, run_id: str) -> None:
    """A test that failed half-way leaves no paused apply behind: its session is ended, the
    playbook killed and its lease removed."""
    if play.poll() is None:
        terminate(f"birth_stage2:{run_id}")
        play.kill()
        play.wait()
        LOCK_PATH.unlink(missing_ok=True)


def apply_status() -> str:
    return squash(playbook("playbooks/apply_status.yml").stdout)


def held_while(
    confirm: str, run_id: str, app: str, meanwhile, code: str = "DOTD-00000412"
) -> tuple[subprocess.Popen, object]:
    """An apply held at the batch that reaches ``code``; ``meanwhile()`` runs while it is
    held, then the held batch goes on. Returns the running playbook and what meanwhile
    returned."""
    blocker, play = held_apply(confirm, run_id, app, code=code)
    try:
        wait_for(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "  # noqa: S608
            f"AND application_name = 'birth_stage2:{run_id}'"
        )
        done = meanwhile()
    finally:
        terminate(app)  # the held batch commits; the control is read before the next one
        blocker.kill()
        blocker.wait()
    return play, done


def hold_then(
    confirm: str, run_id: str, app: str, action: str, reason: str
) -> tuple[subprocess.Popen, str]:
    """An apply held at a batch; ``action`` is set meanwhile, then the held batch goes on.
    Returns the running playbook and what the controller printed."""
    return held_while(confirm, run_id, app, lambda: squash(control(action, reason).stdout))


def test_pause_holds_the_apply_until_resume_and_it_ends_with_exactly_the_plan(ready, applied):
    restore_ready()
    run_id = new_run_id("paused")
    play, said = hold_then(ready.run_id, run_id, "apply-test-pause-blocker", "pause", "replica lag")
    try:
        assert "Apply control on lab-vps: pause (run -> pause), set by" in said, said
        assert (
            "takes it before its next batch, and holds there keeping its lease and permit" in said
        )
        wait_for(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' "  # noqa: S608
            f"AND application_name = 'birth_stage2:{run_id}'"
        )
        held = state()
        time.sleep(3)
        assert state() == held  # paused: not one batch more
        assert play.poll() is None
        shown = apply_status()
        assert "QT-001 control: pause (set by" in shown and ": replica lag)" in shown, shown
        assert (
            f"(birth_stage2:{run_id}), since" in shown
            and "paused, holding between batches" in shown
        )
        # Held after dot_domain_rules' last code: paused before the next collection's first batch.
        assert f"dot_domain_rules {REPORT_DELTAS['dot_domain_rules']}/" in shown
        assert (
            f"field_type_equivalences 0/{REPORT_DELTAS['field_type_equivalences']} (planned"
            in shown
        )
        again = control("pause", "replica lag")
        assert recap_changed(again) == 0  # idempotent
        assert "control on lab-vps: resume (pause -> run)" in squash(control("resume").stdout)
        out, _ = play.communicate(timeout=300)
    finally:
        stop(play, run_id)
    assert play.returncode == 0, out[-3000:]
    assert state() == applied["after"]
    assert "total: 137/137 births applied" in apply_status()


def test_abort_stops_cleanly_and_a_rerun_resumes_to_the_same_end_state(ready, applied):
    restore_ready()
    run_id = new_run_id("aborted")
    play, said = hold_then(
        ready.run_id, run_id, "apply-test-abort-blocker", "abort", "wrong window"
    )
    try:
        assert "and stops there cleanly (resumable)" in said, said
        out, _ = play.communicate(timeout=300)
    finally:
        stop(play, run_id)
    assert play.returncode != 0, out[-3000:]
    text = squash(out).replace("''", "'")
    assert "apply aborted by" in text and "(wrong window)" in text, out[-4000:]
    # Held at dot_domain_rules' last code: aborted before the next collection's first batch.
    assert "nothing half-applied; the ledger row stays planned" in text
    mid = state()
    ledger = {row[0]: row for row in mid["ledger"]}
    assert ledger["dot_domain_rules"][1] == "done"
    assert {ledger[c][1] for c in ("field_type_equivalences", "normative_relations")} == {"planned"}
    assert "failed" not in {row[1] for row in mid["ledger"]}
    assert mid["births"] == BIRTHS_BEFORE + sum(int(row[3]) for row in mid["ledger"])
    resumed_id = new_run_id("resume-after-abort")
    apply(ready.run_id, "-e", f"birth_stage2_run_id={resumed_id}")
    assert summary(resumed_id)["apply"]["mode"] == "resume"
    assert state() == applied["after"]


def write_a_code_by_hand() -> None:
    """An unborn dot_domain_rules row (triggers off) and its code, added to the plan's codes."""
    sql(
        "SET session_replication_role = replica;\n"
        "INSERT INTO dot_domain_rules (rule_code, title) "
        "VALUES ('DOTD-BYHAND', 'not reviewed');\n"
        "INSERT INTO birth_stage2_plan_codes (plan_code, collection_name, entity_code) "
        f"VALUES ('{PLAN}', 'dot_domain_rules', 'DOTD-BYHAND');"
    )


def test_codes_written_by_hand_mid_apply_are_never_born(ready, applied):
    """A code added by hand to the plan's codes while a collection is being applied: the
    collection goes on from the codes its CALL copied and checked against the signed evidence,
    so it ends as reviewed and the added code is never born; the next collection's CALL finds
    the plan no longer the reviewed one and is refused. Once the code is gone, a rerun
    resumes to the reviewed end state."""
    restore_ready()
    run_id = new_run_id("codes-by-hand")
    play, _ = held_while(
        ready.run_id, run_id, "apply-test-codes-blocker", write_a_code_by_hand,
        code=first_planned_code("dot_domain_rules"),
    )  # fmt: skip
    try:
        out = finished(play)
    finally:
        stop(play, run_id)
    assert play.returncode != 0, out[-3000:]
    text = squash(out).replace("''", "'")
    assert "gate codes" in text, text[-4000:]
    assert sql("SELECT count(*) FROM birth_registry WHERE entity_code = 'DOTD-BYHAND'") == [("0",)]
    ledger = {row[0]: row for row in state()["ledger"]}
    assert ledger["dot_domain_rules"][1:4] == (
        "done",
        str(REPORT_DELTAS["dot_domain_rules"]),
        str(REPORT_DELTAS["dot_domain_rules"]),
    )
    assert {ledger[c][1] for c in ("field_type_equivalences", "normative_relations")} == {"planned"}
    sql(
        "DELETE FROM birth_stage2_plan_codes WHERE entity_code = 'DOTD-BYHAND';\n"
        "DELETE FROM dot_domain_rules WHERE rule_code = 'DOTD-BYHAND';"
    )
    resumed_id = new_run_id("resume-after-codes")
    apply(ready.run_id, "-e", f"birth_stage2_run_id={resumed_id}")
    assert summary(resumed_id)["apply"]["mode"] == "resume"
    assert state() == applied["after"]


def test_control_refuses_bad_input_and_writes_nothing_in_check_mode(ready):
    restore_ready()
    bad = control("stop", "it's; DROP", check=False)
    assert bad.returncode != 0
    text = squash(bad.stdout)
    assert 'birth_stage2_apply_control must be pause, resume or abort (got "stop")' in text
    assert "birth_stage2_apply_control_reason must be up to 200 of" in text
    # Before any apply deployed its sources there is nothing to steer.
    none = control("pause", check=False)
    assert none.returncode != 0
    assert "no apply has been deployed, so there is nothing to pause" in squash(none.stdout)
    assert "no apply has been deployed on this database" in apply_status()


PWNED = "/tmp/birth-stage2-pwned"  # noqa: S108 (a file the attack would create; never made)


def test_the_operators_queries_can_neither_write_nor_reach_psql(ready):
    """The throttle and critical queries are the operator's own SQL, run as the apply's role: a
    query that writes (a DELETE inside a WITH passes as one statement starting with WITH), a
    psql meta-command and a second statement after a semicolon are each refused before the
    apply writes anything, and no shell command ran."""
    restore_ready()
    before = state()
    writes = apply(
        ready.run_id, "-e", json.dumps({"birth_stage2_apply_throttle_query": (
            "WITH gone AS (DELETE FROM public.birth_registry RETURNING 1) "
            "SELECT count(*) > 0 FROM gone"
        )}), check=False,
    )  # fmt: skip
    # (PostgreSQL names the statement: a SELECT whose WITH deletes.)
    refused(writes, "in a read-only transaction", "FAILED in phase apply")
    assert state() == before
    escape = apply(
        ready.run_id, "-e", json.dumps({
            "birth_stage2_apply_critical_query": f"SELECT false \\! touch {PWNED}",
            "birth_stage2_apply_throttle_query": "SELECT false; DELETE FROM public.birth_registry",
        }), check=False,
    )  # fmt: skip
    text = squash(refused(escape, NOTHING_WRITTEN))
    assert "birth_stage2_apply_critical_query may not hold a backslash" in text, text[-3000:]
    assert "birth_stage2_apply_throttle_query must be one statement" in text, text[-3000:]
    assert state() == before
    pwned = subprocess.run(
        ["docker", "exec", LAB_CONTAINER, "test", "-e", PWNED], env=lab_env(), check=False
    )
    assert pwned.returncode != 0
    assert not Path(PWNED).exists()


# ---- the apply steers itself: throttle, critical abort, lock timeouts, an interrupted controller


def first_planned_code(collection: str) -> str:
    return sql(
        "SELECT min(entity_code) FROM birth_stage2_plan_codes "  # noqa: S608
        f"WHERE collection_name = '{collection}'"
    )[0][0]


def throttle() -> list[tuple[str, ...]]:
    """The apply's throttle, once it has one (its progress table is made as the apply starts)."""
    wait_for("SELECT 1 WHERE to_regclass('birth_stage2_apply_progress') IS NOT NULL", timeout=240)
    return wait_for(
        "SELECT throttle FROM birth_stage2_apply_progress WHERE throttle IS NOT NULL", timeout=240
    )


def finished(play: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = play.communicate(timeout=timeout)
    return out


def test_a_lock_held_on_the_collection_throttles_the_apply_until_it_is_released(ready, applied):
    """The apply is held at apr_action_types (the first collection) while another session
    takes the next one, apr_approvals, exclusively: reaching it, the apply throttles, saying
    why, writes nothing more, and finishes once the lock is gone."""
    restore_ready()
    run_id = new_run_id("locked")
    code = first_planned_code("apr_action_types")
    blocker, play = held_apply(
        ready.run_id, run_id, "apply-test-lock-blocker", code=code, collection="apr_action_types"
    )
    locker = None
    try:
        wait_for(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "  # noqa: S608
            f"AND application_name = 'birth_stage2:{run_id}'",
            timeout=240,
        )
        locker = background_psql(
            "SET application_name = 'apply-test-locker';\nBEGIN;\n"
            "LOCK TABLE apr_approvals IN ACCESS EXCLUSIVE MODE;\nSELECT pg_sleep(600);\n"
        )
        wait_for(
            "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name = 'apply-test-locker' AND l.granted "
            "AND l.mode = 'AccessExclusiveLock'"
        )
        terminate("apply-test-lock-blocker")
        ((why,),) = throttle()
        assert "waiting on or holding exclusively a lock on apr_approvals" in why, why
        assert "holds AccessExclusiveLock" in why and "birth_stage2_apply_max_lock_waiters" in why
        shown = apply_status()
        assert "throttled since" in shown and "throttled, holding between batches" in shown, shown
        held = state()
        assert {row[0]: row[1] for row in held["ledger"]}["apr_approvals"] == "planned"
        time.sleep(3)
        assert state() == held  # throttled: not one batch more
        assert play.poll() is None
    finally:
        terminate("apply-test-lock-blocker")
        terminate("apply-test-locker")
        for proc in (blocker, locker):
            if proc is not None:
                proc.kill()
                proc.wait()
    try:
        out = finished(play)
    finally:
        stop(play, run_id)
    assert play.returncode == 0, out[-3000:]
    text = squash(out)
    assert "throttled: 1 session(s) waiting on or holding exclusively a lock on apr_approvals" in (
        text
    )
    assert state() == applied["after"]
    ((reason, waited),) = sql(
        "SELECT throttle_reason, throttled_ms > 0 FROM birth_stage2_apply_batches "
        "WHERE throttle_reason IS NOT NULL"
    )
    assert "lock on apr_approvals" in reason and waited == "t"
    assert sql("SELECT throttle IS NULL FROM birth_stage2_apply_progress") == [("t",)]


ADVISORY_SWITCH = 424242
SWITCH_QUERY = (
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l WHERE l.locktype = 'advisory' "  # noqa: S608
    f"AND l.objid = {ADVISORY_SWITCH} AND l.granted)"
)


def test_the_throttle_query_holds_the_apply_and_ctrl_c_leaves_it_running_to_its_end(ready, applied):
    """The operator's throttle query holds the apply; the controller is interrupted (Ctrl-C to
    its process group) meanwhile. The apply goes on by itself on the VPS, as the runbook says:
    once the query lets it go it ends, exactly the plan; a rerun naming the interrupted run's
    lease finds every row done and passes its checks. An operator's write of the control row
    whose REPEATABLE READ snapshot is older than the apply's leaving the throttle is not
    refused: the apply keeps its throttle in its own progress row, never in the control row."""
    restore_ready()
    run_id = new_run_id("ctrl-c")
    switch = background_psql(
        f"SET application_name = 'apply-test-switch';\nSELECT pg_advisory_lock({ADVISORY_SWITCH});"
        "\nSELECT pg_sleep(600);\n"
    )
    play = background_apply(
        ready.run_id, run_id, "-e", json.dumps({"birth_stage2_apply_throttle_query": SWITCH_QUERY}),
        "-e", "birth_stage2_apply_progress_every=1",
    )  # fmt: skip
    try:
        ((why,),) = throttle()
        assert why == "the throttle query returned true (birth_stage2_apply_throttle_query)"
        held = state()
        assert {row[1] for row in held["ledger"]} == {"planned"}
        time.sleep(3)  # a progress round or two prints the throttle
        os.killpg(play.pid, signal.SIGINT)
        out = finished(play, timeout=120)
        assert play.returncode != 0
        text = squash(out)
        assert "runs in the background on the VPS" in text, text[-3000:]
        assert "throttled: the throttle query returned true" in text
        time.sleep(3)
        assert state() == held  # still held, not half-applied ...
        wait_for(  # ... and still running on the VPS
            "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' "  # noqa: S608
            f"AND application_name = 'birth_stage2:{run_id}'"
        )
        # The operator's transaction takes its snapshot while the apply is throttled ...
        operator = subprocess.Popen(
            [*psql_prefix(LAB_DB), "-X", "-q", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=lab_env(),
        )  # fmt: skip
        operator.stdin.write(
            "SET application_name = 'apply-test-operator';\n"
            "BEGIN ISOLATION LEVEL REPEATABLE READ;\n"
            "SELECT state FROM birth_stage2_apply_control;\n"
            "SELECT pg_sleep(6);\n"
            "UPDATE birth_stage2_apply_control SET reason = 'noted while it ran';\n"
            "COMMIT;\n"
        )
        operator.stdin.close()
        wait_for(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'apply-test-operator' "
            "AND wait_event = 'PgSleep'"
        )
        terminate("apply-test-switch")  # the query lets it go
        # ... the apply leaves its throttle meanwhile; the operator's write still commits.
        wait_for("SELECT 1 FROM birth_stage2_apply_progress WHERE throttle IS NULL")
        assert operator.wait(timeout=60) == 0, operator.stderr.read()
        assert sql("SELECT reason FROM birth_stage2_apply_control") == [("noted while it ran",)]
        wait_for(
            "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM birth_backfill_ledger "  # noqa: S608
            f"WHERE plan_code = '{PLAN}' AND status <> 'done')"
        )
        wait_for(
            "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity "  # noqa: S608
            f"WHERE application_name = 'birth_stage2:{run_id}')"
        )
    finally:
        terminate("apply-test-switch")
        switch.kill()
        switch.wait()
        stop(play, run_id)
    assert state() == applied["after"]
    after_id = new_run_id("after-ctrl-c")
    apply(ready.run_id, "-e", f"birth_stage2_run_id={after_id}", "-e",
          f"birth_stage2_break_lock={run_id}")  # fmt: skip
    assert summary(after_id)["apply"]["mode"] == "nothing"
    assert state() == applied["after"]


def test_a_critical_threshold_stops_the_apply_cleanly_and_a_rerun_applies(ready, applied):
    """A transaction open longer than the critical bound: the apply stops before its first
    batch, nothing applied, the permit still open; once it is gone a rerun applies the plan."""
    restore_ready()
    before = state()
    old = background_psql(
        "SET application_name = 'apply-test-old-xact';\nBEGIN;\nSELECT pg_sleep(600);\n"
    )
    try:
        wait_for("SELECT 1 FROM pg_stat_activity WHERE application_name = 'apply-test-old-xact'")
        stopped = apply(ready.run_id, "-e", "birth_stage2_apply_critical_xact_age=1s", check=False)
    finally:
        terminate("apply-test-old-xact")
        old.kill()
        old.wait()
    text = refused(stopped, "apply aborted by a critical threshold (the oldest open transaction")
    assert "birth_stage2_apply_critical_xact_age" in text
    assert "nothing half-applied; the ledger row stays planned" in text
    assert state() == before  # nothing applied, the permit still open
    ((said,),) = sql("SELECT throttle FROM birth_stage2_apply_progress")
    assert said.startswith("critical: the oldest open transaction is")
    apply(ready.run_id)
    assert state() == applied["after"]


def test_a_batch_that_times_out_is_retried_smaller_then_the_row_is_marked_failed(ready, applied):
    """A batch waiting on a lock past birth_stage2_apply_batch_lock_timeout is rolled back and
    retried on fewer pages after a backoff: it goes on once the lock is gone. Held through
    every retry, the row is marked failed with the reason; the batches before stay."""
    restore_ready()
    code = first_planned_code("dot_domain_rules")
    steer = [
        "-e", "birth_stage2_apply_batch_size=500", "-e", "birth_stage2_apply_batch_target_ms=0",
        "-e", "birth_stage2_apply_batch_min=1", "-e", "birth_stage2_apply_batch_lock_timeout=1s",
        "-e", "birth_stage2_apply_batch_backoff_ms=300",
    ]  # fmt: skip
    run_id = new_run_id("retried")
    blocker = hold_birth("apply-test-retry-blocker", code, "dot_domain_rules")
    play = background_apply(
        ready.run_id, run_id, *steer, "-e", "birth_stage2_apply_batch_retries=5"
    )
    try:
        wait_for(  # a try timed out: the backoff's sleep
            "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' "  # noqa: S608
            f"AND application_name = 'birth_stage2:{run_id}'",
            timeout=240,
        )
        terminate("apply-test-retry-blocker")
        out = finished(play)
    finally:
        terminate("apply-test-retry-blocker")
        blocker.kill()
        blocker.wait()
        stop(play, run_id)
    assert play.returncode == 0, out[-3000:]
    assert state() == applied["after"]
    # The first batch of dot_domain_rules spans all its pages; its retry spans fewer.
    retried = sql(
        "SELECT attempts, target_rows, page_to - page_from FROM birth_stage2_apply_batches "
        "WHERE collection_name = 'dot_domain_rules' AND attempts > 1 ORDER BY batch_no"
    )
    assert retried and int(retried[0][1]) < 500, retried
    ((pages,),) = sql("SELECT max(page_to) FROM birth_stage2_apply_batches "
                      "WHERE collection_name = 'dot_domain_rules'")  # fmt: skip
    assert int(retried[0][2]) < int(pages), retried

    # Held through every try: failed, with the reason, and nothing of the batch committed.
    restore_ready()
    blocker = hold_birth("apply-test-retry-blocker", code, "dot_domain_rules")
    try:
        failed = apply(
            ready.run_id, *steer, "-e", "birth_stage2_apply_batch_retries=1", check=False
        )
    finally:
        terminate("apply-test-retry-blocker")
        blocker.kill()
        blocker.wait()
    text = refused(failed, "timed out 2 time(s) waiting for a lock", "is marked failed")
    assert "canceling statement due to lock timeout" in text
    mid = state()
    ledger = {row[0]: row for row in mid["ledger"]}
    assert ledger["dot_domain_rules"][1] == "failed"
    assert mid["births"] == BIRTHS_BEFORE + sum(int(row[3]) for row in mid["ledger"])
    ((outcome,),) = sql("SELECT outcome FROM birth_stage2_apply_batches WHERE outcome <> 'ok'")
    assert outcome == "timed out: canceling statement due to lock timeout"
