"""The apply rehearsal's verdict (tasks/rehearse.yml; unit-tested).

The rehearsal (step 03) births the plan in one transaction it rolls back: pass 1 must birth
exactly the plan per collection, pass 2 nothing (idempotent), and after the rollback the
registry holds the births it held before. Every problem is listed, one line each.

No Ansible import: the unit tests load this file as plain Python.
"""

from __future__ import annotations


def rehearsal_problems(rehearsal, check_mode=False, applied_rows=0):
    """Why the rehearsal ``rehearsal`` (03_apply_rehearsal.sql's JSON) refuses, one line each.

    Nothing planned is a refusal only before any apply: check mode rolled the plan back, and
    after a completed apply (``applied_rows`` ledger rows done) nothing is left to rehearse.
    """
    plan = rehearsal.get("plan") or {}
    pass1 = rehearsal.get("pass1") or {}
    pass2 = rehearsal.get("pass2") or {}
    out = []
    if not plan and not check_mode and not applied_rows:
        out.append("no planned ledger rows to rehearse: run --tags plan first")
    for collection, want in plan.items():
        got = pass1.get(collection)
        if got != want:
            shown = "nothing" if got is None else got
            out.append(f"{collection}: pass 1 applied {shown}, plan says {want}")
    out += [
        f"{collection}: pass 2 applied {n}, must be 0 (not idempotent)"
        for collection, n in pass2.items()
        if n != 0
    ]
    before, after = rehearsal.get("births_before"), rehearsal.get("births_after_rollback")
    if after != before:
        out.append(f"births {before} before, {after} after rollback")
    return out


class FilterModule:
    def filters(self):
        return {"birth_stage2_rehearsal_problems": rehearsal_problems}
