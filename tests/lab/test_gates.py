"""Gates that hold between people (issue 9), on the lab, through the real playbooks and the
real ssh-keygen: the signed happy path, every bypass refused with nothing written (the
refusal naming the gate and the command that opens it), the database's own enforcement of
the apply procedure, tampering found by playbooks/audit.yml, and a review from a second
clone whose reports/ is empty.

Operators are the lab's (playbooks/lab.yml makes their keys): alice runs dry-runs, bob
reviews, carol issues permits; the VPS login key (lab-operator) may run dry-runs. Two
database templates keep the states the tests start from: "planned" (alice's signed full
Stage 2 run, nothing reviewed) and "ready" (plus bob's review and carol's permit).
BIRTH_LAB_DB=<db> runs them against that lab database, its own staging root and run lock.
"""

# The SQL below is built from the lab's own names and fixed test values, never from input.
# ruff: noqa: S608

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import LAB_DB, REPO, lab_env, run_psql
from tests.lab.test_apply import (
    BIRTHS_AFTER,
    BIRTHS_BEFORE,
    EXTRA,
    NOTHING_WRITTEN,
    REPORT_DELTAS,
    RESET_VPS,
    admin,
    apply,
    key,
    new_run_id,
    open_permit,
    playbook,
    refused,
    review,
    sql,
    state,
    summary,
)

PLANNED_DB = f"{LAB_DB}_gates_planned"
READY_DB = f"{LAB_DB}_gates_ready"
PROC = "sp_dot_birth_qt001_apply"
RECORDS = "birth_stage2_run_records"


def save(template: str) -> None:
    admin(
        f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE);\n'
        f'CREATE DATABASE "{template}" TEMPLATE "{LAB_DB}" STRATEGY FILE_COPY;\n'
    )


def restore(template: str) -> None:
    admin(
        f'DROP DATABASE IF EXISTS "{LAB_DB}" WITH (FORCE);\n'
        f'CREATE DATABASE "{LAB_DB}" TEMPLATE "{template}" STRATEGY FILE_COPY;\n'
    )


def written() -> dict:
    """state() plus what a review or permit would add."""
    return {
        **state(),
        "reviews": sql("SELECT count(*) FROM governance_reviews"),
        "records": sql(f"SELECT act, count(*) FROM {RECORDS} GROUP BY 1 ORDER BY 1"),
    }


def audit(check: bool = False) -> subprocess.CompletedProcess:
    return playbook("playbooks/audit.yml", check=check)


def deploy_sources(tmp_path: Path) -> None:
    """Put the apply sources (steps 04, 05) in the database as the apply would, so the
    procedure can be CALLed directly (as an attacker with a psql prompt would)."""
    out = tmp_path / "sql"
    playbook("playbooks/render_sql.yml", "-e", f"birth_stage2_render_dir={out}")
    for name in ("04_dot_birth_qt001_plan_SOURCE.sql", "05_dot_birth_qt001_apply_SOURCE.sql"):
        sql("BEGIN;\n" + (out / name).read_text() + "\nCOMMIT;\n")


def call(collection: str, permit_id: int, role: str | None = None) -> subprocess.CompletedProcess:
    prefix = f"SET ROLE {role};\n" if role else ""
    return run_psql(f"{prefix}CALL {PROC}('{collection}', 5000, {permit_id});\n", check=False)


def open_permit_id() -> int:
    return int(sql("SELECT max(id) FROM governance_permits WHERE status = 'open'")[0][0])


@pytest.fixture(scope="module")
def signed():
    """alice's signed full run ("planned"), then bob's review and carol's permit ("ready")."""
    run_id = new_run_id("signed")
    playbook("stage2.yml", "-e", f"birth_stage2_run_id={run_id}", *key("alice"))
    s = summary(run_id)
    assert s["evidence"]["author"] == "alice"
    save(PLANNED_DB)
    review(run_id, s["evidence"]["sha256"], "bob")
    open_permit(s["evidence"]["sha256"])
    save(READY_DB)
    yield {"run_id": run_id, "sha": s["evidence"]["sha256"], "summary": s}
    playbook("playbooks/lab.yml", "-e", "lab_action=reset", *RESET_VPS)
    for template in (PLANNED_DB, READY_DB):
        admin(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE);')


# ---- 1. the happy path ----------------------------------------------------------------------


def test_happy_path_alice_bob_carol_apply_and_audit_green(signed):
    restore(READY_DB)
    before = state()
    run_id = new_run_id("apply")
    apply(signed["run_id"], "-e", f"birth_stage2_run_id={run_id}")
    after = state()
    assert (before["births"], after["births"]) == (BIRTHS_BEFORE, BIRTHS_AFTER)
    grown = {
        c: int(after["per_collection"].get(c, 0)) - int(before["per_collection"].get(c, 0))
        for c in REPORT_DELTAS
    }
    assert grown == REPORT_DELTAS
    assert sql(f"SELECT act, principal FROM {RECORDS} ORDER BY id") == [
        ("dryrun", "alice"),
        ("review", "bob"),
        ("permit", "carol"),
    ]
    proc = audit(check=True)
    for c in REPORT_DELTAS:
        assert f"{c} (done, {REPORT_DELTAS[c]}/{REPORT_DELTAS[c]}) -> dry-run" in proc.stdout
    assert "review #" in proc.stdout and "by bob approved -> permit #" in proc.stdout


def test_the_summary_names_the_signed_evidence(signed):
    ev = signed["summary"]["evidence"]
    assert ev["recorded"] is True
    assert ev["key_fingerprint"].startswith("SHA256:")
    assert ev["codes"] == REPORT_DELTAS
    assert len({ev["sha256"], ev["figures_sha256"], ev["codes_sha256"], ev["sources_sha256"]}) == 4


# ---- 2. each bypass is refused, nothing written, the refusal names gate and command ---------


def test_alice_reviewing_under_the_name_bob_is_refused(signed):
    restore(PLANNED_DB)
    before = written()
    proc = review(signed["run_id"], signed["sha"], "alice", check=False, label="bob")
    refused(
        proc, "Review refused", NOTHING_WRITTEN, "reviewer: not allowed to review",
        "self-review: signed by the dry-run's own key", "playbooks/review.yml",
        "birth_stage2_signing_key=PATH",
    )  # fmt: skip
    assert written() == before


def test_the_vps_key_reviewing_its_own_dry_run_is_refused(signed):
    restore(PLANNED_DB)
    run_id = new_run_id("vps")
    playbook("stage2.yml", "--tags", "dryrun", "-e", f"birth_stage2_run_id={run_id}")
    s = summary(run_id)
    assert s["evidence"]["author"] == "lab-operator"
    before = written()
    proc = playbook(
        "playbooks/review.yml", "-e", "birth_stage2_review_verdict=approved",
        "-e", f"birth_stage2_review_evidence={s['evidence']['sha256']}",
        "-e", f"birth_stage2_review_run={run_id}", check=False,
    )  # fmt: skip
    refused(proc, NOTHING_WRITTEN, "self-review: signed by the dry-run's own key",
            "not allowed to review", "playbooks/review.yml")  # fmt: skip
    assert written() == before


def test_an_unknown_key_is_refused(signed, tmp_path):
    restore(PLANNED_DB)
    stranger = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    before = written()
    proc = playbook(
        "playbooks/review.yml", "-e", "birth_stage2_review_verdict=approved",
        "-e", f"birth_stage2_review_evidence={signed['sha']}",
        "-e", f"birth_stage2_review_run={signed['run_id']}", "-e", "birth_stage2_reviewer=bob",
        "-e", f"birth_stage2_signing_key={stranger}", check=False,
    )  # fmt: skip
    refused(proc, NOTHING_WRITTEN, "reviewer: not allowed to review", "is not in",
            "playbooks/review.yml")  # fmt: skip
    assert written() == before


def test_bob_issuing_the_permit_is_refused(signed):
    restore(PLANNED_DB)
    review(signed["run_id"], signed["sha"], "bob")
    before = written()
    proc = open_permit(signed["sha"], owner="bob", check=False)
    refused(proc, "Permit refused", NOTHING_WRITTEN, "owner: not allowed to issue permits",
            "playbooks/permit.yml")  # fmt: skip
    assert written() == before


def test_a_permit_over_the_expiry_cap_is_refused(signed):
    restore(PLANNED_DB)
    before = written()
    proc = open_permit(signed["sha"], expires="25h", check=False)
    refused(proc, NOTHING_WRITTEN, "permit_expiry_cap: expiry 25h is over the cap 24h",
            "birth_stage2_permit_max_expiry", "playbooks/permit.yml")  # fmt: skip
    assert written() == before


def test_a_review_of_other_evidence_is_refused(signed):
    restore(PLANNED_DB)
    before = written()
    proc = review(signed["run_id"], "0" * 64, "bob", check=False)
    refused(proc, NOTHING_WRITTEN, "is not the evidence of run", signed["sha"])
    assert written() == before


def test_an_edited_signature_does_not_count(signed):
    restore(PLANNED_DB)
    # bob rejects; someone with table access turns it into an approval, text and row alike.
    playbook(
        "playbooks/review.yml", *key("bob"), "-e", "birth_stage2_review_verdict=rejected",
        "-e", f"birth_stage2_review_evidence={signed['sha']}",
        "-e", f"birth_stage2_review_run={signed['run_id']}",
    )  # fmt: skip
    open_permit(signed["sha"])
    sql(
        f"UPDATE {RECORDS} SET verdict = 'approved', "
        "signed_text = replace(signed_text, 'verdict: rejected', 'verdict: approved') "
        "WHERE act = 'review';\n"
        "UPDATE governance_reviews SET verdict = 'approved';"
    )
    before = state()
    proc = apply(signed["run_id"], check=False)
    refused(proc, NOTHING_WRITTEN, "approved_independent_review", "0 valid", "playbooks/review.yml")
    assert state() == before
    out = refused(audit(), "Audit failed", "review record #")
    assert "edited or forged" in out


def test_a_forged_signature_does_not_count(signed):
    restore(READY_DB)
    # Replace bob's signature with alice's over the same text: her key is not a reviewer's.
    (hex_text,) = sql(
        f"SELECT encode(convert_to(signed_text, 'UTF8'), 'hex') FROM {RECORDS} WHERE act = 'review'"
    )[0]
    alice = REPO / ".lab" / "operators" / "alice" / "id_ed25519"
    forged = subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-f", str(alice), "-n", "birth-stage2-review"],
        input=bytes.fromhex(hex_text).decode(), text=True, capture_output=True, check=True,
    ).stdout  # fmt: skip
    sql(f"UPDATE {RECORDS} SET signature = $sig${forged}$sig$ WHERE act = 'review';")
    before = state()
    proc = apply(signed["run_id"], check=False)
    refused(proc, NOTHING_WRITTEN, "approved_independent_review", "playbooks/review.yml")
    assert state() == before
    refused(audit(), "Audit failed", "not allowed to review")


def test_a_permit_bound_to_other_evidence_is_refused(signed):
    restore(READY_DB)
    # carol's permit is bound to the first evidence; a code is swapped and the run redone.
    swap_a_code()
    run_id = new_run_id("redo")
    playbook("stage2.yml", "-e", f"birth_stage2_run_id={run_id}", *key("alice"))
    s = summary(run_id)
    assert s["evidence"]["sha256"] != signed["sha"]
    review(run_id, s["evidence"]["sha256"], "bob")
    before = state()
    proc = apply(run_id, check=False)
    refused(proc, NOTHING_WRITTEN, "permit_evidence", f"bound to evidence {signed['sha']}",
            "playbooks/permit.yml", s["evidence"]["sha256"])  # fmt: skip
    assert state() == before


def swap_a_code() -> None:
    """Delete one unborn planned dot_domain_rules row; add one with no birth (triggers off)."""
    sql(
        "DELETE FROM dot_domain_rules WHERE rule_code = (SELECT min(entity_code) "
        "  FROM birth_stage2_plan_codes WHERE collection_name = 'dot_domain_rules');\n"
        "SET session_replication_role = replica;\n"
        "INSERT INTO dot_domain_rules (rule_code, title) VALUES ('DOTD-SWAPPED', 'not reviewed');"
    )


def test_a_swapped_unborn_code_is_refused_before_anything_is_written(signed, tmp_path):
    restore(READY_DB)
    swap_a_code()
    before = state()
    proc = apply(signed["run_id"], check=False)
    refused(proc, NOTHING_WRITTEN, "codes: dot_domain_rules", "dry-run and review again",
            "ansible-playbook stage2.yml")  # fmt: skip
    assert state() == before
    # The procedure refuses it too, whoever calls.
    deploy_sources(tmp_path)
    proc = call("dot_domain_rules", open_permit_id())
    assert proc.returncode != 0
    assert "gate codes" in proc.stderr and "dry-run and review again" in proc.stderr
    assert state()["births"] == before["births"]


def test_call_by_a_role_with_table_grants_is_denied(signed, tmp_path):
    restore(READY_DB)
    deploy_sources(tmp_path)
    sql(
        "DROP ROLE IF EXISTS gates_intruder; CREATE ROLE gates_intruder;\n"
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO gates_intruder;"
    )
    try:
        before = state()
        proc = call("dot_domain_rules", open_permit_id(), role="gates_intruder")
        assert proc.returncode != 0
        assert "permission denied for procedure" in proc.stderr
        assert state() == before
    finally:
        sql("DROP OWNED BY gates_intruder; DROP ROLE gates_intruder;")


def test_call_as_superuser_with_a_permit_and_no_review_is_refused(signed, tmp_path):
    restore(PLANNED_DB)
    deploy_sources(tmp_path)
    # A permit row and a permit record bound to the evidence, written by hand: no review.
    sql(
        "INSERT INTO governance_permits (scope, status, issued_by, issued_at, expires_at) "
        "VALUES ('birth-stage2-qt001-apply', 'open', 'carol', now(), now() + interval '1 hour');\n"
        f"INSERT INTO {RECORDS} (act, plan_code, run_id, dryrun_run_id, evidence_sha256, "
        "principal, key_fingerprint, signed_text, signature, permit_id) "
        f"SELECT 'permit', 'QT-001', 'forged', '{signed['run_id']}', '{signed['sha']}', 'carol', "
        "'SHA256:x', 'x', 'x', max(id) FROM governance_permits;"
    )
    before = state()
    proc = call("dot_domain_rules", open_permit_id())
    assert proc.returncode != 0
    assert "gate approved_independent_review" in proc.stderr
    assert state() == before


def started_apply(tmp_path) -> int:
    """An apply that died after its first collection: CALLed for one collection only."""
    restore(READY_DB)
    deploy_sources(tmp_path)
    permit_id = open_permit_id()
    proc = call("apr_action_types", permit_id)
    assert proc.returncode == 0, proc.stderr
    return permit_id


def test_a_resume_after_revoke_is_refused(signed, tmp_path):
    permit_id = started_apply(tmp_path)
    playbook("playbooks/permit.yml", "-e", "birth_stage2_permit_action=revoke")
    assert sql(f"SELECT status FROM governance_permits WHERE id = {permit_id}") == [("revoked",)]
    before = state()
    proc = apply(signed["run_id"], check=False)
    refused(proc, NOTHING_WRITTEN, f"permit_live: permit #{permit_id} was revoked",
            "playbooks/permit.yml")  # fmt: skip
    assert state() == before
    proc = call("dot_domain_rules", permit_id)
    assert proc.returncode != 0 and "gate permit_live" in proc.stderr
    assert state() == before
    # The owner's new permit, bound to the same evidence, lets the apply finish.
    open_permit(signed["sha"])
    resumed = new_run_id("resume")
    apply(signed["run_id"], "-e", f"birth_stage2_run_id={resumed}")
    assert summary(resumed)["apply"]["mode"] == "resume"
    assert state()["births"] == BIRTHS_AFTER
    audit(check=True)


def test_a_resume_after_expiry_is_refused(signed, tmp_path):
    permit_id = started_apply(tmp_path)
    sql(
        "UPDATE governance_permits SET issued_at = now() - interval '3 hours', "
        f"expires_at = now() - interval '1 hour' WHERE id = {permit_id};"
    )
    before = state()
    proc = apply(signed["run_id"], check=False)
    refused(proc, NOTHING_WRITTEN, f"permit_live: permit #{permit_id} expired",
            "playbooks/permit.yml")  # fmt: skip
    assert state() == before
    proc = call("dot_domain_rules", permit_id)
    assert proc.returncode != 0 and "gate permit_live" in proc.stderr
    assert state() == before


def test_public_may_not_execute_the_apply_procedure(signed, tmp_path):
    restore(READY_DB)
    deploy_sources(tmp_path)
    assert sql(
        f"SELECT has_function_privilege('pg_monitor', '{PROC}(text, integer, bigint)', 'EXECUTE')"
    ) == [("f",)]


# ---- 3. tampering found after the fact ------------------------------------------------------


def test_audit_finds_a_review_row_forged_in_sql(signed):
    restore(READY_DB)
    apply(signed["run_id"])
    audit(check=True)
    sql(
        "INSERT INTO governance_reviews (subject, author, reviewer, verdict, evidence_sha256) "
        "SELECT subject, author, 'mallory', 'approved', evidence_sha256 "
        "FROM governance_reviews LIMIT 1;"
    )
    (forged,) = sql("SELECT max(id) FROM governance_reviews")[0]
    out = refused(audit(), "Audit failed")
    assert f"review row #{forged} (mallory approved" in out
    assert "has no signed review record" in out


# ---- 4. a review from a second clone ------------------------------------------------------


def test_a_review_from_a_second_clone_with_empty_reports(signed):
    restore(PLANNED_DB)
    # A short path: ssh's ControlPath (under the clone's .ansible/) must stay below 108 bytes.
    short = Path(tempfile.mkdtemp(prefix="b2c", dir="/tmp"))
    clone = short / "c"
    shutil.copytree(
        REPO, clone, symlinks=True,
        ignore=shutil.ignore_patterns(
            "reports", ".git", ".lab", ".venv", ".ansible", "__pycache__", ".*cache"
        ),
    )  # fmt: skip
    (clone / ".lab").symlink_to((REPO / ".lab").resolve())
    assert not (clone / "reports").exists()
    env = lab_env()
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ansible-playbook"), "playbooks/review.yml", *key("bob"),
         "-e", "birth_stage2_review_verdict=approved",
         "-e", f"birth_stage2_review_evidence={signed['sha']}",
         "-e", f"birth_stage2_review_run={signed['run_id']}", *EXTRA],
        cwd=clone, env=env, text=True, capture_output=True, timeout=600,
    )  # fmt: skip
    shutil.rmtree(short, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Recorded review #" in proc.stdout
    assert sql(f"SELECT principal, verdict FROM {RECORDS} WHERE act = 'review'") == [
        ("bob", "approved")
    ]
