"""The apply's gates, as plain functions: what an apply would do (fresh, resume or nothing)
and every reason it may not, each with the command that opens the gate.

Used by tasks/apply.yml through the `birth_stage2_apply_gates` filter; unit-tested in
tests/unit/test_apply_gates.py without Ansible or a database.
"""

from __future__ import annotations

import hashlib

REDO = (
    "run a new dry-run (ansible-playbook stage2.yml), have its evidence reviewed "
    "and confirm that run"
)


def fixes(current_sha, confirm, author):
    """How to open each gate the decision view names."""
    review = (
        "ansible-playbook playbooks/review.yml -e birth_stage2_reviewer=NAME (not the author "
        f"{author or 'of the dry-run'}) -e birth_stage2_review_verdict=approved "
        f"-e birth_stage2_review_evidence={current_sha} -e birth_stage2_review_run={confirm}"
    )
    return {
        "approved_independent_review": "an independent T2 review of the current evidence: "
        + review,
        "open_permit": "the owner opens one: ansible-playbook playbooks/permit.yml "
        "-e birth_stage2_permit_action=open -e birth_stage2_permit_issuer=OWNER "
        "-e birth_stage2_permit_expires_in=2h",
        "no_collection_no_go": "fix that collection (its dry-run no_go says why) or leave it to "
        "its owner, then " + REDO,
        "plan_matches_dryrun": "rewrite the plan from the current dry-run: ansible-playbook "
        "stage2.yml, then review and confirm that run",
        "plan_has_rows": "write the plan: ansible-playbook stage2.yml",
        "safety_guards_green": "a safety guard is red: ansible-playbook stage2.yml --tags verify "
        "names it (docs/RUNBOOK.md#guard-red)",
        "rerun_delta_guard_green": "an earlier apply left births missing: finish it (--tags apply "
        "with its confirmed run) or investigate",
        "views": "create the views: ansible-playbook stage2.yml",
    }


def _problem(gate, reason, fix):
    return {"gate": gate, "reason": reason, "fix": fix}


def apply_mode(ledger):
    """fresh, resume or nothing, from the plan's ledger rows."""
    active = [r for r in ledger if r["status"] in ("planned", "applying")]
    failed = [r for r in ledger if r["status"] == "failed"]
    if ledger and not active and not failed:
        return "nothing"
    started = [r for r in active if r.get("permit_id") or r["status"] == "applying"]
    return "resume" if started else "fresh"


def confirm_problems(confirm, confirm_summary, confirm_sha, reports_dir):
    if not confirm_summary:
        return [
            _problem(
                "confirm",
                f"reports/{confirm}/summary.json not found under {reports_dir} on the controller",
                "confirm the run id of a Stage 2 run that did the dry-run "
                "(reports/latest points at the last one)",
            )
        ]
    if not confirm_sha:
        return [
            _problem(
                "confirm",
                f"run {confirm} did no dry-run (its summary.json has no evidence.sha256)",
                "confirm a run that did the dry-run phase",
            )
        ]
    return []


def failed_row_problems(ledger):
    return [
        _problem(
            "ledger",
            f"ledger row {r['id']} of {r['collection']}"
            f" is failed (applied {r['applied']} of {r['expected']})",
            "the collection changed under the apply: investigate with its owner "
            "(docs/RUNBOOK.md#apply-failed)",
        )
        for r in ledger
        if r["status"] == "failed"
    ]


def decision_problems(decision, fix, only=None):
    """The decision view's reasons ('<gate>: <detail>'), each with its fix."""
    out = []
    for reason in decision.get("reasons") or []:
        gate = reason.split(":", 1)[0]
        if only is None or gate in only:
            out.append(_problem(gate, reason, fix.get(gate, REDO)))
    return out


def resume_problems(state, active, confirm, confirm_summary, confirm_sha, permit_scope, fix):
    """A started apply continues only under its own consumed permit, from the reviewed
    dry-run it started from, with nothing moved behind its back."""
    out = []
    ids = sorted({r.get("permit_id") for r in active}, key=str)
    permit_id = ids[0] if len(ids) == 1 and ids[0] is not None else None
    permit = (state.get("permits") or {}).get(str(permit_id), {}) if permit_id else {}
    if (
        permit_id is None
        or permit.get("status") != "consumed"
        or permit.get("scope") != permit_scope
    ):
        out.append(
            _problem(
                "permit",
                f"the unfinished rows carry permit(s) {', '.join(str(i) for i in ids)} "
                f"({permit.get('status', 'not found')}); a resume continues under the one "
                "consumed permit its first batch took",
                "investigate the ledger rows "
                + ", ".join(r["collection"] for r in active)
                + " with the owner",
            )
        )
    if (state.get("confirm_review") or {}).get("verdict") != "approved":
        out.append(
            _problem(
                "approved_independent_review",
                f"the confirmed dry-run {confirm} (evidence {confirm_sha}) has no approved "
                "review by someone other than its author",
                "confirm the reviewed dry-run this apply started from",
            )
        )
    confirmed = ((confirm_summary.get("dryrun") or {}).get("collections")) or {}
    for r in active:
        want = confirmed.get(r["collection"], {})
        now = (state.get("dryrun") or {}).get(r["collection"], {})
        if want.get("expected_delta") != r["expected"]:
            out.append(
                _problem(
                    "confirm",
                    f"{r['collection']}: the ledger plans {r['expected']} births, the confirmed "
                    f"dry-run {confirm} says {want.get('expected_delta', 'nothing')}",
                    "confirm the dry-run this apply started from",
                )
            )
        if now.get("no_go"):
            out.append(
                _problem(
                    "no_collection_no_go",
                    f"{r['collection']} is a no-go now: {now['no_go']}",
                    fix["no_collection_no_go"],
                )
            )
        elif now.get("expected_delta") != r["expected"] - r["applied"]:
            out.append(
                _problem(
                    "consistency",
                    f"{r['collection']}: dry-run delta now {now.get('expected_delta', 'unknown')}, "
                    f"the ledger expects {r['expected']} with {r['applied']} applied: births "
                    "moved outside the apply",
                    "stop and investigate; nothing more is applied",
                )
            )
    out += decision_problems(state["decision"], fix, only=("safety_guards_green", "views"))
    return permit_id, out


def apply_gates(state, confirm, confirm_summary, reports_dir, permit_scope):
    """{mode, targets, permit_id, problems} for an apply confirming dry-run `confirm`.

    state: the apply_state probe's JSON (decision, ledger, permits, open_permit,
    confirm_review, dryrun, evidence_sha256); confirm_summary: that run's summary.json.
    """
    confirm_summary = confirm_summary or {}
    confirm_sha = (confirm_summary.get("evidence") or {}).get("sha256") or ""
    author = (confirm_summary.get("evidence") or {}).get("author") or ""
    current = state.get("evidence_sha256")
    ledger = state.get("ledger") or []
    fix = fixes(current, confirm, author)
    mode = apply_mode(ledger)
    active = [r for r in ledger if r["status"] in ("planned", "applying")]
    problems = confirm_problems(confirm, confirm_summary, confirm_sha, reports_dir)
    problems += failed_row_problems(ledger)
    targets, permit_id = [], None
    if mode == "fresh":
        targets = active
        permit_id = (state.get("open_permit") or {}).get("id")
        if confirm_sha and confirm_sha != current:
            problems.append(
                _problem(
                    "evidence",
                    f"the confirmed dry-run {confirm} has evidence sha256 {confirm_sha}, the "
                    f"current dry-run has {current}: the data changed since",
                    REDO,
                )
            )
        if state["decision"].get("status") != "ACTION_READY":
            problems += decision_problems(state["decision"], fix)
    elif mode == "resume":
        targets = active
        permit_id, more = resume_problems(
            state, active, confirm, confirm_summary, confirm_sha, permit_scope, fix
        )
        problems += more
    return {"mode": mode, "targets": targets, "permit_id": permit_id, "problems": problems}


def evidence_sha256(figures_sha256, codes_sha256, sources_sha256):
    """The evidence a review approves and a permit is bound to: the dry-run's figures, the
    exact codes the plan will birth and the text of the apply sources, each by its sha256."""
    for name, value in (
        ("figures", figures_sha256),
        ("codes", codes_sha256),
        ("sources", sources_sha256),
    ):
        if not isinstance(value, str) or len(value) != 64:
            raise ValueError(f"evidence: {name} sha256 missing or malformed: {value!r}")
    text = f"figures:{figures_sha256}\ncodes:{codes_sha256}\nsources:{sources_sha256}\n"
    return hashlib.sha256(text.encode()).hexdigest()


class FilterModule:
    def filters(self):
        return {
            "birth_stage2_apply_gates": apply_gates,
            "birth_stage2_evidence_sha256": evidence_sha256,
        }
