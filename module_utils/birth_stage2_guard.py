"""The birth invariant guard, as plain functions: snapshot SQL, comparison, messages.

No AnsibleModule here: ``library/birth_guard.py`` only wires options to these functions, and
``tests/unit/test_guard_logic.py`` drives them with tables. The invariants are those of the
live-system contract, section 4:

- ``birth_neutral``: births per collection identical before and after a step;
- ``macro_net_zero``: the total birth count unchanged over a run without apply;
- ``apply_growth``: each collection grows by exactly its ``expected_growth``, the total by
  the sum.

Declared exceptions (``allowed``, e.g. a report upload births one ``knowledge_documents``
row) are allowed EXACTLY: a declared +1 that did not happen is a violation too, because it
means the step did not do what it said.
"""

from __future__ import annotations

from ansible.module_utils.birth_stage2_psql import quote_ident, quote_literal, quote_qualified

INVARIANTS = ("birth_neutral", "macro_net_zero", "apply_growth")
TOTAL = "*total*"
DEFAULT_OBJECTS = {
    "birth_registry": "birth_registry",
    "apr_approvals": "apr_approvals",
    "governance_permits": "governance_permits",
    "birth_backfill_ledger": "birth_backfill_ledger",
    "permit_scope": "birth-stage2-qt001-apply",
    "plan_code": "QT-001",
}
# Optional: the schema of the tables above when their names are not qualified (by default
# they resolve through the session's search_path).
SCHEMA_KEY = "schema"
FIX_HINT = "nothing was committed by guarded steps; see docs/RUNBOOK.md#birth-leak"
# For births judged after the transactions that made them had committed.
COMMITTED_HINT = (
    "these births were committed by Stage 2's own transactions: read them back "
    "(SELECT * FROM <birth registry> ORDER BY id DESC) and follow docs/RUNBOOK.md#birth-leak "
    "before any rerun"
)

# The contract fixes the registry's identity column name; only object names are variables.
_ID_COLUMN = "id"


def resolve_objects(objects=None):
    """Defaults overlaid with ``objects``; unknown keys and empty names are errors."""
    merged = dict(DEFAULT_OBJECTS, **{SCHEMA_KEY: None})
    known = sorted(merged)
    for key, value in (objects or {}).items():
        if key not in merged:
            raise ValueError(f"objects key {key!r} is not one of {', '.join(known)}")
        if key == SCHEMA_KEY and value is None:
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(f"objects.{key} must be a non-empty string, got {value!r}")
        merged[key] = value
    return merged


def snapshot_sql(objects=None):
    """One read-only statement that returns the whole snapshot as one JSON document."""
    obj = resolve_objects(objects)

    def table(key):
        name = obj[key]
        if obj[SCHEMA_KEY] and "." not in name:
            return f"{quote_ident(obj[SCHEMA_KEY])}.{quote_ident(name)}"
        return quote_qualified(name)

    registry = table("birth_registry")
    approvals = table("apr_approvals")
    permits = table("governance_permits")
    ledger = table("birth_backfill_ledger")
    # pg_get_serial_sequence parses its first argument as a (quoted) name: pass the quoted one.
    registry_text = quote_literal(registry)
    scope = quote_literal(obj["permit_scope"])
    plan = quote_literal(obj["plan_code"])
    # Every name above is quoted by quote_qualified/quote_literal; nothing is pasted raw.
    return f"""-- birth guard snapshot: one statement, so every figure comes from one MVCC snapshot.
WITH per AS (
  SELECT collection_name, count(*) AS n
    FROM {registry}
   GROUP BY collection_name
)
SELECT json_build_object(
  'total', (SELECT coalesce(sum(n), 0)::bigint FROM per),
  'per_collection', (SELECT coalesce(json_object_agg(collection_name, n ORDER BY collection_name),
                                     '{{}}'::json)
                       FROM per),
  'identity_seq', (SELECT s.last_value
                     FROM pg_sequences s
                     JOIN pg_namespace ns ON ns.nspname = s.schemaname
                     JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = s.sequencename
                    WHERE c.oid = pg_get_serial_sequence({registry_text},
                                                         '{_ID_COLUMN}')::regclass),
  'counters', json_build_object(
    'births', (SELECT coalesce(sum(n), 0)::bigint FROM per),
    'apr_approvals', (SELECT count(*) FROM {approvals}),
    'open_permits', (SELECT count(*) FROM {permits}
                      WHERE scope = {scope} AND status = 'open' AND expires_at > now()),
    'ledger', (SELECT coalesce(json_object_agg(status, n ORDER BY status), '{{}}'::json)
                 FROM (SELECT status, count(*) AS n FROM {ledger}
                        WHERE plan_code = {plan} GROUP BY status) l)
  ),
  'taken_at', now()
);
"""  # noqa: S608


def as_snapshot(name, value):
    """Validate a snapshot; a registered ``action: snapshot`` result is accepted too."""
    if isinstance(value, dict) and "per_collection" not in value and "snapshot" in value:
        value = value["snapshot"]
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a snapshot (a dict), got {type(value).__name__}")
    per = value.get("per_collection")
    if not isinstance(per, dict):
        raise ValueError(f"{name} has no per_collection dict: is it a birth_guard snapshot?")
    for collection, count in per.items():
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"{name}.per_collection[{collection!r}] is {count!r}, not a count")
    total = value.get("total")
    if isinstance(total, bool) or not isinstance(total, int):
        raise ValueError(f"{name}.total is {total!r}, not a count")
    return value


def _deltas(name, value):
    out = {}
    for collection, delta in (value or {}).items():
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise ValueError(f"{name}[{collection!r}] is {delta!r}, not an integer")
        out[collection] = delta
    return out


def _violation(invariant, collection, before, after, expected_delta):
    return {
        "invariant": invariant,
        "collection": collection,
        "expected": before + expected_delta,
        "seen": after,
        "before": before,
        "expected_delta": expected_delta,
        "seen_delta": after - before,
    }


def compare(before, after, invariant, expected_growth=None, allowed=None):
    """Violations of ``invariant`` between two snapshots; an empty list means it holds.

    Each violation: ``{invariant, collection (or '*total*'), expected, seen}`` where
    ``expected``/``seen`` are birth counts after the step, plus ``before``,
    ``expected_delta`` and ``seen_delta``. A collection missing from a snapshot counts 0, so
    collections that appear or disappear are compared too.
    """
    if invariant not in INVARIANTS:
        raise ValueError(f"invariant {invariant!r} is not one of {', '.join(INVARIANTS)}")
    before = as_snapshot("before", before)
    after = as_snapshot("after", after)
    allowed = _deltas("allowed", allowed)
    if invariant == "apply_growth":
        if expected_growth is None:
            raise ValueError("apply_growth needs expected_growth (collection -> births)")
        growth = _deltas("expected_growth", expected_growth)
    elif expected_growth:
        raise ValueError(f"expected_growth only applies to apply_growth, not {invariant}")
    else:
        growth = {}

    expected = {c: growth.get(c, 0) + allowed.get(c, 0) for c in set(growth) | set(allowed)}
    violations = []
    if invariant in ("birth_neutral", "apply_growth"):
        b_per, a_per = before["per_collection"], after["per_collection"]
        for collection in sorted(set(b_per) | set(a_per) | set(expected)):
            b, a = b_per.get(collection, 0), a_per.get(collection, 0)
            if a - b != expected.get(collection, 0):
                violations.append(
                    _violation(invariant, collection, b, a, expected.get(collection, 0))
                )
    if invariant in ("macro_net_zero", "apply_growth"):
        total_delta = sum(expected.values())
        if after["total"] - before["total"] != total_delta:
            violations.append(
                _violation(invariant, TOTAL, before["total"], after["total"], total_delta)
            )
    return violations


def deltas(before, after):
    """Per-collection births added (or lost) between two snapshots, zeros left out."""
    b_per = as_snapshot("before", before)["per_collection"]
    a_per = as_snapshot("after", after)["per_collection"]
    return _difference(a_per, b_per)


def _difference(minuend, subtrahend):
    """Per collection ``minuend - subtrahend``, sorted, zeros left out."""
    out = {}
    for collection in sorted(set(minuend) | set(subtrahend)):
        delta = minuend.get(collection, 0) - subtrahend.get(collection, 0)
        if delta:
            out[collection] = delta
    return out


def as_attributed(attributed):
    """A snapshot pair (zero, attributed) so that ``compare`` judges Stage 2's own births.

    ``attributed`` maps each collection to the births Stage 2's own transactions made (each
    counted inside its transaction, in its own snapshot: the application's concurrent births
    are not in it).
    """
    per = _deltas("attributed", attributed)
    zero = {"per_collection": {}, "total": 0}
    return zero, {"per_collection": per, "total": sum(per.values())}


def births_by_others(global_deltas, attributed):
    """What moved in the registry during the run but not in Stage 2's transactions."""
    return _difference(_deltas("global", global_deltas), _deltas("attributed", attributed))


def format_violations(label, violations, hint=FIX_HINT):
    """One line per violation, headed by the step and closed by the fix hint."""
    where = f"after '{label}'" if label else "after an unnamed step"
    if not violations:
        return f"birth guard ok {where}"
    lines = [f"birth guard FAILED {where}: {len(violations)} violation(s)"]
    for v in violations:
        off = v["seen"] - v["expected"]
        lines.append(
            f"  {v['invariant']} broken: {v['collection']} expected {v['expected']} "
            f"seen {v['seen']} ({off:+d}; before {v['before']}, "
            f"allowed change {v['expected_delta']:+d}, seen change {v['seen_delta']:+d})"
        )
    lines.append(f"  {hint}")
    return "\n".join(lines)


def judge_attributed(
    label, invariant, attributed, expected_growth=None, allowed=None, hint=None, before=None,
    after=None,
):  # fmt: skip
    """Judge Stage 2's own births (``attributed``); with ``before`` and ``after`` snapshots,
    report the registry's global movement beside them, never a failure.

    Returns (ok, msg, result). Plain: no database, so with no ``before`` the birth_guard
    action runs it in Ansible's worker. Raises ValueError on malformed figures."""
    zero, ours = as_attributed(attributed)
    violations = compare(
        zero, ours, invariant, expected_growth=expected_growth, allowed=allowed or {}
    )
    result = {
        "ok": not violations,
        "violations": violations,
        "attributed": ours["per_collection"],
        "attributed_total": ours["total"],
    }
    if before is not None:
        moved = deltas(before, after)
        result.update(
            before_total=as_snapshot("before", before)["total"],
            after_total=as_snapshot("after", after)["total"],
            after=after,
            deltas=moved,
            births_by_others=births_by_others(moved, ours["per_collection"]),
        )
    others = result.get("births_by_others")
    note = (
        f"; births by others during the run: {sum(others.values()):+d} "
        f"({', '.join(f'{c} {n:+d}' for c, n in others.items()) or 'none'}), never a failure"
        if others is not None
        else ""
    )
    if violations:
        failed = format_violations(label, violations, hint=hint or COMMITTED_HINT)
        return False, failed + note, result
    msg = (
        f"{format_violations(label, [])}: {invariant} holds on Stage 2's own births"
        f" ({ours['total']:+d}){note}"
    )
    return True, msg, result
