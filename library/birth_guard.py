#!/usr/bin/python
"""Ansible module birth_guard: the birth invariant guard (read only, always)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: birth_guard
short_description: Snapshot birth counts and assert the Stage 2 birth invariants (never writes)
description:
  - V(snapshot) reads, in one read-only statement, the birth count per collection and in
    total, the last value of the birth registry's identity sequence, and the headline
    counters (births, C(apr_approvals) rows, open permits of the apply scope, ledger rows of
    the plan by status).
  - V(assert) compares O(before) with O(after) (or with a fresh snapshot) under one
    invariant and fails, one line per violation, naming the step (O(label)), the
    invariant, the collection, the expected and the seen count.
  - Invariants - V(birth_neutral) every collection's births identical (a collection that
    appears or disappears counts); V(macro_net_zero) the total identical; V(apply_growth)
    each collection grows by exactly its O(expected_growth), nothing else moves, the total
    grows by the sum.
  - Declared exceptions (O(allowed)) are allowed exactly. A declared +1 that did not
    happen is a violation as well.
  - The SQL always runs in a C(READ ONLY) transaction that is rolled back, through the
    shared transport, without the Stage 2 advisory lock (a guard never queues behind a run).
    The module behaves identically in check mode.
  - An V(assert) of O(attributed) alone (no O(before), no O(after)) reads no database; the
    role's action plugin (C(roles/birth_stage2/action_plugins/birth_guard.py)) judges it in
    Ansible's own worker with the same function, without starting the module. Every other
    call runs the module on the host.
author:
  - Birth Stage 2 automation
extends_documentation_fragment:
  - birth_stage2_connection
options:
  statement_timeout:
    description: PostgreSQL C(statement_timeout) for the snapshot query.
    type: str
    default: 10min
  lock_timeout:
    description: PostgreSQL C(lock_timeout) for the snapshot query.
    type: str
    default: 10s
  timeout:
    description: Seconds the whole psql process may take.
    type: int
    default: 900
  application_name:
    description: C(application_name) of the guard's session.
    type: str
    default: birth_stage2_guard
  action:
    description:
      - V(snapshot) returns a snapshot; V(assert) checks an invariant.
    type: str
    choices: [snapshot, assert]
    required: true
  objects:
    description:
      - Names of the live objects the snapshot reads; keys not given keep their default.
        A name may be schema-qualified (C(schema.table), split on the first dot), or
        qualified by C(schema); every name is quoted as an identifier.
    type: dict
    default:
      birth_registry: birth_registry
      apr_approvals: apr_approvals
      governance_permits: governance_permits
      birth_backfill_ledger: birth_backfill_ledger
      permit_scope: birth-stage2-qt001-apply
      plan_code: QT-001
    suboptions:
      birth_registry:
        description: The birth registry table.
        type: str
      apr_approvals:
        description: The approvals table counted as a headline counter.
        type: str
      governance_permits:
        description: The permits table.
        type: str
      birth_backfill_ledger:
        description: The backfill ledger table.
        type: str
      permit_scope:
        description: Permit scope whose open permits are counted.
        type: str
      plan_code:
        description: Ledger plan code whose rows are counted by status.
        type: str
      schema:
        description:
          - Schema of the four tables when their names are not qualified. When unset they
            resolve through the session's C(search_path).
        type: str
  before:
    description:
      - The snapshot taken before the step (the C(snapshot) of a registered
        O(action=snapshot) result; the whole registered result is accepted too).
      - With O(action=assert), O(before) or O(attributed) is required. With O(attributed),
        O(before) only serves to report the registry's global movement.
    type: dict
  attributed:
    description:
      - Births Stage 2's own transactions made, per collection (each step's C(births) as
        M(birth_sql) returns it, summed). The invariant is then asserted on these alone, so
        births the application makes meanwhile are never mistaken for Stage 2's.
      - With O(before), the registry's global movement since O(before) is read too and
        reported as RV(births_by_others) (global minus attributed), never a failure.
    type: dict
  after:
    description:
      - The snapshot after the step. When absent, O(action=assert) takes a fresh one.
    type: dict
  invariant:
    description: Which invariant to assert. Required with O(action=assert).
    type: str
    choices: [birth_neutral, macro_net_zero, apply_growth]
  expected_growth:
    description:
      - Births each collection must gain, for O(invariant=apply_growth) (collection ->
        count, for example the planned C(expected_delta) of each ledger row).
    type: dict
  allowed:
    description:
      - 'Declared exceptions (collection -> births), allowed exactly, for example
        C({knowledge_documents: 1}) for a report upload.'
    type: dict
    default: {}
  label:
    description: The step the assertion follows, used in messages (for example V(classify)).
    type: str
    default: ""
  hint:
    description:
      - Last line of the failure message, pointing at the fix.
      - By default, with O(attributed) (births counted by transactions that had
        committed), it says so and how to read them back; otherwise
        C(nothing was committed by guarded steps; see docs/RUNBOOK.md#birth-leak).
    type: str
attributes:
  check_mode:
    support: full
    description: The guard only reads, so it runs and reports exactly as without check mode.
  diff_mode:
    support: none
notes:
  - The snapshot is one statement, so all of its figures come from one MVCC snapshot.
  - C(identity_seq) may advance in a rolled-back rehearsal; that is not a leak and no
    invariant compares it.
seealso:
  - module: birth_sql
"""

EXAMPLES = r"""
- name: Snapshot births before classification
  birth_guard:
    container: "{{ birth_stage2_container }}"
    db_name: "{{ birth_stage2_db_name }}"
    db_user: "{{ birth_stage2_db_user }}"
    objects: "{{ birth_stage2_guard_objects }}"
    action: snapshot
  register: __birth_stage2_before_classify

- name: Classification is birth-neutral
  birth_guard:
    container: "{{ birth_stage2_container }}"
    db_name: "{{ birth_stage2_db_name }}"
    db_user: "{{ birth_stage2_db_user }}"
    objects: "{{ birth_stage2_guard_objects }}"
    action: assert
    invariant: birth_neutral
    before: "{{ __birth_stage2_before_classify.snapshot }}"
    label: classify

- name: The report upload births exactly one knowledge document, nothing else moved
  birth_guard:
    container: "{{ birth_stage2_container }}"
    db_name: "{{ birth_stage2_db_name }}"
    db_user: "{{ birth_stage2_db_user }}"
    action: assert
    invariant: macro_net_zero
    before: "{{ __birth_stage2_preflight_snapshot.snapshot }}"
    allowed:
      knowledge_documents: 1
    label: report

- name: The apply grew each planned collection by its planned delta
  birth_guard:
    container: "{{ birth_stage2_container }}"
    db_name: "{{ birth_stage2_db_name }}"
    db_user: "{{ birth_stage2_db_user }}"
    action: assert
    invariant: apply_growth
    before: "{{ __birth_stage2_before_apply.snapshot }}"
    expected_growth: "{{ __birth_stage2_plan.result.expected_by_collection }}"
    label: apply
"""

RETURN = r"""
snapshot:
  description: The snapshot (O(action=snapshot)).
  returned: when action is snapshot
  type: dict
  contains:
    total:
      description: Rows in the birth registry.
      type: int
      sample: 50000
    per_collection:
      description: Births per collection name.
      type: dict
      sample: {"apr_approvals": 0, "dot_domain_rules": 1500}
    identity_seq:
      description: last_value of the birth registry's identity sequence (null if unused).
      type: int
      sample: 50012
    counters:
      description: Headline counters - births, apr_approvals rows, open permits of the
        apply scope, ledger rows of the plan by status.
      type: dict
      sample: {"births": 50000, "apr_approvals": 7, "open_permits": 0,
               "ledger": {"planned": 3}}
    taken_at:
      description: Database time of the snapshot.
      type: str
      sample: "2025-11-26T02:41:07.123456+00:00"
  sample: {"total": 50000, "per_collection": {"dot_domain_rules": 1500},
           "identity_seq": 50012, "taken_at": "2025-11-26T02:41:07.123456+00:00",
           "counters": {"births": 50000, "apr_approvals": 7, "open_permits": 0,
                        "ledger": {}}}
ok:
  description: Whether the invariant holds (always true in a successful assert).
  returned: when action is assert
  type: bool
  sample: true
violations:
  description: One entry per broken expectation (empty when ok), each with the invariant,
    the collection (or C(*total*)), the expected and seen counts after the step, the count
    before, and the expected and seen changes.
  returned: when action is assert (also on failure)
  type: list
  elements: dict
  sample: [{"invariant": "birth_neutral", "collection": "apr_approvals", "expected": 0,
            "seen": 7, "before": 0, "expected_delta": 0, "seen_delta": 7}]
before_total:
  description: Total births in O(before).
  returned: when action is assert
  type: int
  sample: 50000
after_total:
  description: Total births in the after snapshot.
  returned: when action is assert
  type: int
  sample: 50000
after:
  description: The after snapshot (the fresh one when O(after) was not given).
  returned: when action is assert
  type: dict
  sample: {"total": 50000, "per_collection": {"dot_domain_rules": 1500}}
deltas:
  description: Per-collection change between the snapshots (the registry's global
    movement, whoever made it), zeros left out.
  returned: when action is assert with O(before)
  type: dict
  sample: {"knowledge_documents": 1}
attributed:
  description: Stage 2's own births per collection, as given in O(attributed).
  returned: when action is assert with O(attributed)
  type: dict
  sample: {}
attributed_total:
  description: The sum of RV(attributed).
  returned: when action is assert with O(attributed)
  type: int
  sample: 0
births_by_others:
  description: The registry's global movement since O(before) minus Stage 2's own births,
    per collection, zeros left out - the application's births during the run. Reported,
    never a failure.
  returned: when action is assert with O(attributed) and O(before)
  type: dict
  sample: {"knowledge_documents": 12}
msg:
  description: A one-line summary, or one line per violation on failure.
  returned: always
  type: str
  sample: "birth guard ok after 'classify'"
"""

# Ansible's layout puts the documentation first, hence the imports below it (E402).
import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.birth_stage2_guard import (  # noqa: E402
    COMMITTED_HINT,
    DEFAULT_OBJECTS,
    FIX_HINT,
    INVARIANTS,
    SCHEMA_KEY,
    as_snapshot,
    compare,
    deltas,
    format_violations,
    judge_attributed,
    snapshot_sql,
)
from ansible.module_utils.birth_stage2_psql import (  # noqa: E402
    build_command,
    connection_argument_spec,
    count_lines,
    explain_error,
    parse_output,
    run_psql,
    wrap_script,
)

SCRIPT_NAME = "birth guard snapshot"


def argument_spec():
    spec = connection_argument_spec()
    spec["statement_timeout"]["default"] = "10min"
    spec["timeout"]["default"] = 900
    spec.update(
        application_name={"type": "str", "default": "birth_stage2_guard"},
        action={"type": "str", "choices": ["snapshot", "assert"], "required": True},
        objects={
            "type": "dict",
            "default": dict(DEFAULT_OBJECTS),
            "options": {key: {"type": "str"} for key in (*DEFAULT_OBJECTS, SCHEMA_KEY)},
        },
        before={"type": "dict"},
        attributed={"type": "dict"},
        after={"type": "dict"},
        invariant={"type": "str", "choices": list(INVARIANTS)},
        expected_growth={"type": "dict"},
        allowed={"type": "dict", "default": {}},
        label={"type": "str", "default": ""},
        hint={"type": "str"},
    )
    return spec


def take_snapshot(module):
    """Run the snapshot query read-only, without the run lock; fail_json on any error."""
    p = module.params
    objects = {k: v for k, v in (p["objects"] or {}).items() if v is not None}
    try:
        sql = snapshot_sql(objects)
        stdin_text, preamble = wrap_script(
            sql,
            lock_name=None,
            statement_timeout=p["statement_timeout"],
            lock_timeout=p["lock_timeout"],
            application_name=p["application_name"],
            transaction="rollback",
            read_only=True,
        )
        docker = p["docker_bin"]
        if "/" not in docker:
            docker = module.get_bin_path(docker, required=True)
        env_names = ["PGPASSWORD"] if p["db_password"] else []
        argv = build_command(docker, p["container"], p["db_user"], p["db_name"], {}, env_names)
    except ValueError as exc:
        module.fail_json(msg=f"birth guard: {exc}")
    env = dict(os.environ)
    if p["db_password"]:
        env["PGPASSWORD"] = p["db_password"]
    rc, stdout, stderr, _elapsed = run_psql(argv, stdin_text, p["timeout"], env)
    if rc != 0:
        module.fail_json(
            msg=explain_error(stderr, preamble, SCRIPT_NAME, body_lines=count_lines(sql)),
            rc=rc,
            stderr=stderr,
        )
    snapshot = parse_output(stdout)["result"]
    if not isinstance(snapshot, dict) or "per_collection" not in snapshot:
        module.fail_json(
            msg=f"{SCRIPT_NAME} returned no snapshot document; output: {stdout[-500:]!r}",
            rc=rc,
            stderr=stderr,
        )
    return snapshot


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_if=[
            ("action", "assert", ("invariant",)),
            ("action", "assert", ("before", "attributed"), True),
        ],
        supports_check_mode=True,
    )
    p = module.params
    label = p["label"]
    if p["hint"] is None:
        # Births judged from their transactions' own counts were committed by then (a step
        # whose births were wrong inside its transaction failed and rolled back instead).
        p["hint"] = COMMITTED_HINT if p["attributed"] is not None else FIX_HINT

    if p["action"] == "snapshot":
        snapshot = take_snapshot(module)
        module.exit_json(
            changed=False,
            snapshot=snapshot,
            msg=f"birth snapshot: {snapshot['total']} births in "
            f"{len(snapshot['per_collection'])} collections",
        )

    if p["attributed"] is not None:
        assert_attributed(module)
    after = p["after"] if p["after"] is not None else take_snapshot(module)
    try:
        violations = compare(
            p["before"],
            after,
            p["invariant"],
            expected_growth=p["expected_growth"],
            allowed=p["allowed"],
        )
        moved = deltas(p["before"], after)
        before, after = as_snapshot("before", p["before"]), as_snapshot("after", after)
    except ValueError as exc:
        module.fail_json(msg=f"birth guard after '{label}': {exc}")
    result = {
        "changed": False,
        "ok": not violations,
        "violations": violations,
        "before_total": before.get("total"),
        "after_total": after.get("total"),
        "after": after,
        "deltas": moved,
    }
    if violations:
        module.fail_json(msg=format_violations(label, violations, hint=p["hint"]), **result)
    module.exit_json(msg=f"{format_violations(label, [])}: {p['invariant']} holds", **result)


def assert_attributed(module):
    """Judge Stage 2's own births; report the registry's global movement beside them."""
    p = module.params
    after = None
    if p["before"] is not None:
        after = p["after"] if p["after"] is not None else take_snapshot(module)
    try:
        ok, msg, result = judge_attributed(
            p["label"], p["invariant"], p["attributed"], p["expected_growth"], p["allowed"],
            p["hint"], p["before"], after,
        )  # fmt: skip
    except ValueError as exc:
        module.fail_json(msg=f"birth guard after '{p['label']}': {exc}")
    if not ok:
        module.fail_json(msg=msg, changed=False, **result)
    module.exit_json(msg=msg, changed=False, **result)


if __name__ == "__main__":
    main()
