"""Stage 2's own births, summed over the run's steps (controller side, unit-tested).

Each write step's ``birth_sql`` result carries ``births``: what its own transaction made,
counted inside it. The run keeps their sum in ``__birth_stage2_attributed``; ``birth_guard``
asserts the invariants on that sum and reports the rest of the registry's movement as births
by others.

No Ansible import: errors are ValueError (Ansible reports them as the filter's error), so
the unit tests load this file as plain Python.
"""

from __future__ import annotations


def _counts(name, value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping collection -> births, got {value!r}")
    for collection, delta in value.items():
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise ValueError(f"{name}[{collection!r}] is {delta!r}, not an integer")
    return value


def add_births(total, step_result):
    """``total`` plus the births of one step (a ``birth_sql`` result, or its ``births``).

    Only a committed transaction adds: a rolled-back one (a rehearsal, check mode) made
    nothing that lasts, whatever it counted before its ROLLBACK.
    """
    out = dict(_counts("total", total))
    births = step_result
    if isinstance(step_result, dict) and "transaction" in step_result:
        if step_result.get("transaction") != "commit" or step_result.get("skipped"):
            return {c: n for c, n in sorted(out.items()) if n}
        births = step_result.get("births")
    for collection, delta in _counts("births", births).items():
        out[collection] = out.get(collection, 0) + delta
    return {c: n for c, n in sorted(out.items()) if n}


def applied_births(before, after):
    """Births the apply's batches committed: per collection, applied after minus before.

    ``before`` and ``after`` are lists of ledger rows ``{collection, applied}`` (the plan
    view's, read before and after the CALLs); each batch moved its row's ``applied`` in the
    same transaction as its births.
    """
    if not isinstance(before, list) or not isinstance(after, list):
        raise ValueError("applied_births takes two lists of {collection, applied} rows")
    was = {r["collection"]: int(r.get("applied") or 0) for r in before}
    out = {}
    # Only the collections this apply worked on: a row finished by an earlier apply (a
    # resume skips it) moved nothing now.
    for row in after:
        if row["collection"] not in was:
            continue
        delta = int(row.get("applied") or 0) - was[row["collection"]]
        if delta:
            out[row["collection"]] = delta
    return out


class FilterModule:
    def filters(self):
        return {
            "birth_stage2_add_births": add_births,
            "birth_stage2_applied_births": applied_births,
        }
