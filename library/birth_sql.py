#!/usr/bin/python
"""Ansible module birth_sql: run one Stage 2 SQL script through docker exec psql."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: birth_sql
short_description: Run one Stage 2 SQL script in the database container, truthfully
description:
  - Pipes one SQL script (a file staged on the host, or inline text) into
    C(docker exec -i <container> psql -X -v ON_ERROR_STOP=1) on the host the task runs on.
    The container cannot see host paths, so the script always travels on stdin.
  - The script is wrapped by the shared transport (C(module_utils/birth_stage2_psql.py)) with
    C(statement_timeout), C(lock_timeout), C(application_name), a session advisory lock named
    by O(lock_name) (so two Stage 2 sessions never overlap; released when psql exits), a
    transaction chosen by O(transaction), and timing markers.
  - The script's last JSON document is its result. When it is an object with a boolean
    C(changed) key, that is what the task reports; otherwise C(changed) follows from
    O(transaction) and O(read_only). A read-only run, and a run asked to roll back, never
    report a change.
  - Before anything runs, the script is checked for statements that would make the wrapper
    lie - its own C(BEGIN)/C(COMMIT)/C(ROLLBACK) under O(transaction=commit) or
    O(transaction=rollback), C(\connect), C(\q), C(\i), C(\o), C(\set ON_ERROR_STOP), a last
    statement without C(;) - and refused with the line that holds it.
  - 'Errors come back as C(<script> line <N>: ERROR: <message>), N counted in the
    script itself, not in the wrapped stdin.'
author:
  - Birth Stage 2 automation
extends_documentation_fragment:
  - birth_stage2_connection
options:
  src:
    description:
      - Path, on the host the task runs on, of a staged C(.sql) file.
      - Mutually exclusive with O(sql); one of the two is required.
    type: path
  sql:
    description:
      - Inline SQL text. Mutually exclusive with O(src); one of the two is required.
    type: str
  stage_to:
    description:
      - With O(sql), first stage the text on the host at this path (mode 0640, parent
        directory created with mode 0750, written atomically and only when the content
        differs), then pipe the staged text to psql, as an operator would
        C(cat file | docker exec -i ...). Folds staging and running into one SSH round trip.
      - Writing or rewriting the file counts as a change (a rerun with the same text does
        not). In check mode nothing is written; the SQL is rehearsed from the text.
    type: path
  psql_vars:
    description:
      - psql variables, passed as C(-v name=value) and used in the script as C(:'name')
        (a literal) or C(:"name") (an identifier).
      - Names must match C(^[A-Za-z_][A-Za-z0-9_]*$) and may not be psql's own settings
        (C(ON_ERROR_STOP), C(AUTOCOMMIT) ...); values may not contain a newline.
    type: dict
    default: {}
  transaction:
    description:
      - V(commit) wraps the script in C(BEGIN) ... C(COMMIT).
      - V(rollback) wraps it in C(BEGIN) ... C(ROLLBACK) (a rehearsal that writes nothing).
      - V(none) leaves transactions to the script (it commits by itself); such a script is
        not run in check mode.
    type: str
    choices: [commit, rollback, none]
    default: commit
  read_only:
    description:
      - Run the script in a C(READ ONLY) transaction (with O(transaction=none), every
        transaction of the session defaults to read only). C(changed) is then always false.
    type: bool
    default: false
  lock_name:
    description:
      - Name of the session advisory lock taken before the script runs (key derived from
        sha256 of the name). All Stage 2 scripts share one name so they never overlap.
    type: str
    default: birth_stage2
  advisory_lock:
    description:
      - Take the advisory lock O(lock_name) before the script. V(false) only for the short
        sessions that must reach the database while a run holds it - the apply's controller
        (playbooks/apply_control.yml) and its status (playbooks/apply_status.yml) - which
        take no lease either.
    type: bool
    default: true
  lock_wait_seconds:
    description:
      - How long to keep trying the advisory lock (every 0.2 s) before failing with a
        message that names the session holding it.
    type: int
    default: 5
  statement_timeout:
    description: PostgreSQL C(statement_timeout) for the session (for example V(30min), V(0)).
    type: str
    default: 30min
  lock_timeout:
    description: PostgreSQL C(lock_timeout) for the session.
    type: str
    default: 10s
  application_name:
    description: C(application_name) of the session, as seen in C(pg_stat_activity).
    type: str
    default: birth_stage2
  timeout:
    description:
      - Seconds the whole psql process may take. On expiry the docker client is killed;
        psql inside the container may keep running until C(statement_timeout) stops it.
    type: int
    default: 3600
  expect_json:
    description: Fail when the script printed no JSON document.
    type: bool
    default: true
  lease_path:
    description:
      - The run lease on the host (the file M(birth_run_lock) takes). With O(lease_run_id),
        the script runs only while that run still holds the lease - the fence. A run whose
        lease was broken (another run took it over) or released stops before the script
        starts, with a message that says so.
      - While the script runs, the lease's C(refreshed_at) is moved forward every
        O(heartbeat_seconds), so a long script never makes its run look stale. If the lease
        is lost meanwhile, the script's session is cancelled inside the container
        (C(pg_cancel_backend) by C(application_name)); what it committed before stays.
      - In check mode the lease is checked and kept fresh too (the lease is the run's own,
        released at its end; nothing else is written).
    type: path
  lease_run_id:
    description: The run that must hold O(lease_path).
    type: str
  fence:
    description:
      - The fence table in the database. When the lease (O(lease_path), O(lease_run_id)) is
        this run's and carries a fencing C(token) (M(birth_run_lock) issues one), every
        session that may write sets C(birth_stage2.fence_token) and, inside the step's
        transaction (for O(transaction=none), before the script, in autocommit), records the
        token for O(lock_name) in this table - unless the database has already seen a greater
        token, from a run that took the lease over. Then the step is refused by the database,
        nothing of it written, and the task reports C(fenced=true).
      - The check applies only while the table exists (step 01 creates it, the rollback drops
        it). Read-only sessions are not fenced.
    type: dict
    suboptions:
      table:
        description: The fence table (columns C(lock_name), C(token), C(run_id), C(updated_at)).
        type: str
        required: true
      schema:
        description: Its schema (unqualified when empty).
        type: str
  heartbeat_seconds:
    description: How often the lease is refreshed (and checked) while the script runs.
    type: int
    default: 60
  births:
    description:
      - Attribute births to this script's own transaction and judge them before it ends.
        Births per collection are counted at the start of the wrapped transaction and again
        before its C(COMMIT) or C(ROLLBACK), in the same REPEATABLE READ snapshot, so the
        difference is exactly what the script did; what other sessions commit meanwhile is
        invisible to it.
      - A difference other than O(births.allowed), or a birth hidden by a deletion (the
        largest birth id moved while no count did), raises inside the transaction, so
        nothing of the step is committed.
      - Ignored for O(read_only=true) and O(transaction=none) (the script owns its
        transactions and must judge its own births).
    type: dict
    suboptions:
      table:
        description:
          - The birth registry table (its C(collection_name) and C(id) columns are the
            contract's).
        type: str
        required: true
      schema:
        description:
          - Its schema (unqualified when empty, though the session's C(search_path) is
            C(pg_catalog, pg_temp)).
        type: str
      allowed:
        description: Births the script is declared to make, per collection, exactly.
        type: dict
        default: {}
attributes:
  check_mode:
    support: full
    description:
      - O(read_only=true) runs as asked. O(transaction=commit) runs as
        O(transaction=rollback), a real rehearsal; C(changed) is what a real run would
        change. O(transaction=none) is not run; the task reports C(changed=true) and
        C(skipped_in_check_mode=true).
  diff_mode:
    support: none
notes:
  - The module runs on the VPS (the Ansible target), with the host's python3 and the docker
    client; nothing but the standard library and C(ansible.module_utils) is needed.
  - psql prints with C(-A -t) (unaligned, tuples only); have the script print one JSON
    document per line, for example with C(json_build_object) or C(json_agg).
  - Line numbers in errors are those psql reports, the line on which the failing statement
    ends.
seealso:
  - module: birth_guard
  - module: birth_run_lock
"""

EXAMPLES = r"""
- name: Classify identity blockers (01_classify.sql, staged on the host)
  birth_sql:
    container: "{{ birth_stage2_container }}"
    db_name: "{{ birth_stage2_db_name }}"
    db_user: "{{ birth_stage2_db_user }}"
    src: "{{ birth_stage2_staging_dir }}/01_classify.sql"
    psql_vars:
      registry: "{{ birth_stage2_objects.collection_registry }}"
  register: __birth_stage2_classify

- name: Read the dry-run numbers (read only, never changed)
  birth_sql:
    container: "{{ birth_stage2_container }}"
    db_name: "{{ birth_stage2_db_name }}"
    db_user: "{{ birth_stage2_db_user }}"
    src: "{{ birth_stage2_staging_dir }}/10_dryrun_numbers.sql"
    read_only: true
  register: __birth_stage2_dryrun

- name: Rehearse the apply and roll it back
  birth_sql:
    container: "{{ birth_stage2_container }}"
    db_name: "{{ birth_stage2_db_name }}"
    db_user: "{{ birth_stage2_db_user }}"
    src: "{{ birth_stage2_staging_dir }}/03_apply_rehearsal.sql"
    transaction: rollback

- name: Inline probe with a password kept out of argv and logs
  birth_sql:
    container: pg
    db_name: directus
    db_user: directus
    db_password: "{{ vault_birth_stage2_db_password }}"
    sql: "SELECT json_build_object('births', count(*)) FROM birth_registry;"
    read_only: true
"""

RETURN = r"""
staged_changed:
  description: Whether O(stage_to) was written (created or its content replaced) by this call.
  returned: always
  type: bool
  sample: false
result:
  description: The last JSON document the script printed (null when none).
  returned: when the script ran
  type: raw
  sample: {"changed": true, "classified": 12, "needs_owner": 2}
documents:
  description: Every JSON document the script printed, in order.
  returned: when the script ran
  type: list
  elements: raw
  sample: [{"step": "classify", "classified": 12}, {"changed": true}]
other_lines:
  description: Output lines that were not JSON (psql prints with -A -t).
  returned: when the script ran
  type: list
  elements: str
  sample: ["t"]
db_ms:
  description: Milliseconds the script took inside the database, from markers printed
    after the lock was taken and after COMMIT/ROLLBACK; null when a marker is missing.
  returned: when the script ran
  type: float
  sample: 1834.512
elapsed_ms:
  description: Milliseconds the whole docker exec psql process took.
  returned: when the script ran
  type: float
  sample: 2210.9
stderr_lines:
  description: psql's messages (NOTICE, WARNING, INFO), without the psql:<stdin>:N prefix.
  returned: always
  type: list
  elements: str
  sample: ["NOTICE: classified 12 blockers, 2 NEEDS_OWNER"]
stderr:
  description: psql's raw stderr.
  returned: on failure
  type: str
  sample: "psql:<stdin>:64: ERROR:  relation \"birth_registy\" does not exist"
script:
  description: Name of the script (the file name of O(src), or C(inline sql)).
  returned: always
  type: str
  sample: 01_classify.sql
transaction:
  description: The transaction mode actually used (V(rollback) for a commit in check mode).
  returned: always
  type: str
  sample: rollback
rc:
  description: Exit status of docker exec psql (psql exits 3 on a script error, 124 here
    means the O(timeout) expired); null when nothing ran.
  returned: always
  type: int
  sample: 0
skipped_in_check_mode:
  description: True when the script was not run because a self-committing script
    (O(transaction=none)) cannot be rehearsed in check mode.
  returned: always
  type: bool
  sample: false
fenced:
  description: True when the script did not run, or was cancelled, because this run no
    longer held its lease (O(lease_path)), or when the database refused it because it had
    seen a greater fencing token (O(fence)).
  returned: always
  type: bool
  sample: false
outcome_unknown:
  description: True when psql outlived O(timeout). Its session was cancelled inside the
    container, but what a self-committing script committed before that is known only by
    reading the state back.
  returned: on failure
  type: bool
  sample: false
births:
  description:
    - Births the script's own transaction made, per collection (zeros left out), counted
      before its end in its own snapshot; null when O(births) was not asked for or did not
      apply (read only, O(transaction=none), check mode skip).
    - Under O(transaction=rollback) these births were rolled back with the rest; they are
      what a committing run would have made.
  returned: always
  type: dict
  sample: {}
msg:
  description: What happened, or why it failed.
  returned: always
  type: str
  sample: "01_classify.sql line 12: ERROR: column \"birth_code_kinds\" does not exist"
"""

# Ansible's layout puts the documentation first, hence the imports below it (E402).
import os  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.birth_stage2_lock import (  # noqa: E402
    fence,
    heartbeat,
    lease_token,
    read_lease,
    replace_lease,
)
from ansible.module_utils.birth_stage2_psql import (  # noqa: E402
    FENCE_REFUSED_TEXT,
    TIMEOUT_RC,
    TRANSACTIONS,
    build_command,
    connection_argument_spec,
    count_lines,
    explain_error,
    parse_output,
    plan_transaction,
    quote_literal,
    reported_changed,
    run_psql,
    stderr_lines,
    wrap_script,
)

INLINE_NAME = "inline sql"


def argument_spec():
    spec = connection_argument_spec()
    spec.update(
        src={"type": "path"},
        sql={"type": "str"},
        stage_to={"type": "path"},
        psql_vars={"type": "dict", "default": {}},
        transaction={"type": "str", "choices": list(TRANSACTIONS), "default": "commit"},
        read_only={"type": "bool", "default": False},
        lock_name={"type": "str", "default": "birth_stage2"},
        advisory_lock={"type": "bool", "default": True},
        lock_wait_seconds={"type": "int", "default": 5},
        application_name={"type": "str", "default": "birth_stage2"},
        expect_json={"type": "bool", "default": True},
        lease_path={"type": "path"},
        lease_run_id={"type": "str"},
        heartbeat_seconds={"type": "int", "default": 60},
        fence={
            "type": "dict",
            "options": {
                "table": {"type": "str", "required": True},
                "schema": {"type": "str"},
            },
        },
        births={
            "type": "dict",
            "options": {
                "table": {"type": "str", "required": True},
                "schema": {"type": "str"},
                "allowed": {"type": "dict", "default": {}},
            },
        },
    )
    return spec


def read_script(module, src):
    """The staged file's text; a missing file fails with the phase that creates it."""
    if not os.path.isfile(src):
        module.fail_json(
            msg=(
                f"staged file {src} not found on {socket.gethostname()}: run the 'stage' "
                "phase first (ansible-playbook stage2.yml --tags stage)"
            ),
            script=os.path.basename(src),
            src=src,
            rc=None,
            stderr_lines=[],
            transaction=module.params["transaction"],
            skipped_in_check_mode=False,
        )
    try:
        with open(src, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        module.fail_json(msg=f"cannot read staged file {src}: {exc}", script=src, src=src)


def stage_text(path, text):
    """Write text to path (0640; parent 0750) atomically when it differs; True if written."""
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except (OSError, UnicodeDecodeError):
        pass
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o750, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".staging-", suffix=".sql")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


FENCE_HINT = (
    "Read back what happened with ansible-playbook stage2.yml --tags dryrun; see "
    "docs/RUNBOOK.md#lease-broken"
)


class Lease:
    """The fence: this run's lease, checked and kept fresh around one script."""

    def __init__(self, path, run_id):
        self.path, self.run_id = path, run_id
        self.lost = None
        self.token = None  # the lease's fencing token, once read from a lease that is ours

    def check(self):
        """Why this run must stop (and remember it), else refresh the heartbeat; None if ok."""
        try:
            existing = read_lease(self.path)
            reason = fence(existing, self.run_id, self.path)
            if reason is None:
                self.token = lease_token(existing)
                replace_lease(self.path, heartbeat(existing, time.time()))
        except (OSError, ValueError) as exc:
            reason = f"the run lease {self.path} cannot be read or refreshed: {exc}"
        if reason and not self.lost:
            self.lost = reason
        return reason

    def hold(self, why):
        """Mark the lease held on purpose (kept at release) while it is still this run's."""
        try:
            existing = read_lease(self.path)
            if fence(existing, self.run_id, self.path) is None:
                replace_lease(self.path, heartbeat(existing, time.time(), hold=why))
        except (OSError, ValueError):
            pass


def cancel_session(module, argv_prefix, env):
    """Cancel, inside the container, the sessions of this script's application_name."""
    p = module.params
    # The only value pasted is the application_name, quoted as a literal.
    app = quote_literal(p["application_name"])
    sql = (
        "SELECT count(pg_catalog.pg_cancel_backend(a.pid)) FROM pg_catalog.pg_stat_activity a "  # noqa: S608
        f"WHERE a.application_name = {app} AND a.pid <> pg_catalog.pg_backend_pid();"
    )
    rc, out, err, _ = run_psql([*argv_prefix, "-c", sql], "", 60, env)
    if rc == 0:
        return (
            f"its session was cancelled inside the container ({out.strip() or 0} backend(s) "
            f"with application_name {p['application_name']}); what it committed before that "
            "stays committed"
        )
    return f"cancelling its session failed too ({err.strip()[-300:]})"


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[("src", "sql"), ("src", "stage_to")],
        required_one_of=[("src", "sql")],
        supports_check_mode=True,
    )
    p = module.params
    src = p["src"]
    stage_to = p["stage_to"]
    script = os.path.basename(src or stage_to) if (src or stage_to) else INLINE_NAME
    body = read_script(module, src) if src else p["sql"]
    common = {"script": script, "src": src or stage_to, "stderr_lines": [], "rc": None}
    staged_changed = False
    if stage_to and not module.check_mode:
        try:
            staged_changed = stage_text(stage_to, body)
        except OSError as exc:
            module.fail_json(msg=f"cannot stage {script} at {stage_to}: {exc}", **common)
    common["staged_changed"] = staged_changed

    lease = None
    if p["lease_path"] and p["lease_run_id"]:
        lease = Lease(p["lease_path"], p["lease_run_id"])
        reason = lease.check()
        if reason:
            module.fail_json(
                msg=f"{script}: {reason}; nothing of this script ran. {FENCE_HINT}",
                fenced=True,
                transaction=p["transaction"],
                skipped_in_check_mode=False,
                **common,
            )

    effective = plan_transaction(p["transaction"], p["read_only"], module.check_mode)
    if effective is None:
        # Nothing ran: no rc to report (Ansible reads a non-zero rc, None included, as failed).
        module.exit_json(
            changed=True,
            skipped_in_check_mode=True,
            transaction=p["transaction"],
            msg=f"would run {script}; a self-committing script cannot be rehearsed in check mode",
            **{k: v for k, v in common.items() if k != "rc"},
        )

    # The database side of the fence: this run's token, checked by every write session.
    db_fence = None
    if lease is not None and lease.token is not None and p["fence"]:
        db_fence = dict(
            p["fence"], token=lease.token, lock_name=p["lock_name"], run_id=p["lease_run_id"]
        )
    try:
        stdin_text, preamble = wrap_script(
            body,
            lock_name=p["lock_name"] if p["advisory_lock"] else None,
            lock_wait_seconds=p["lock_wait_seconds"],
            statement_timeout=p["statement_timeout"],
            lock_timeout=p["lock_timeout"],
            application_name=p["application_name"],
            transaction=effective,
            read_only=p["read_only"],
            idle_timeout=p["idle_timeout"],
            births=p["births"],
            fence=db_fence,
        )
        docker = p["docker_bin"]
        if "/" not in docker:
            docker = module.get_bin_path(docker, required=True)
        env_names = ["PGPASSWORD"] if p["db_password"] else []
        argv = build_command(
            docker, p["container"], p["db_user"], p["db_name"], p["psql_vars"], env_names
        )
    except ValueError as exc:
        module.fail_json(
            msg=f"{script}: {exc}",
            transaction=effective,
            skipped_in_check_mode=False,
            **common,
        )

    env = dict(os.environ)
    if p["db_password"]:
        env["PGPASSWORD"] = p["db_password"]
    # The same docker exec psql, for a one-line cancel from outside the script's session.
    side = build_command(docker, p["container"], p["db_user"], p["db_name"], {}, env_names)[:-2]
    cancelled = []

    def watch():
        if lease is not None and lease.check() and not cancelled:
            cancelled.append(cancel_session(module, side, env))

    stopped = []

    def on_timeout():
        stopped.append(cancel_session(module, side, env))
        return stopped[-1]

    rc, stdout, stderr, elapsed_ms = run_psql(
        argv,
        stdin_text,
        p["timeout"],
        env,
        watch=watch,
        every=p["heartbeat_seconds"],
        on_timeout=on_timeout,
    )
    common.update(rc=rc, stderr_lines=stderr_lines(stderr))
    outcome = {
        "transaction": effective,
        "skipped_in_check_mode": False,
        "elapsed_ms": elapsed_ms,
        "fenced": bool(cancelled),
    }

    if cancelled:
        module.fail_json(
            msg=f"{script}: {lease.lost} while it ran; {cancelled[0]}. {FENCE_HINT}",
            stderr=stderr,
            **common,
            **outcome,
        )
    if rc == TIMEOUT_RC:
        if lease is not None:
            lease.hold(f"the outcome of {script} is unknown (psql outlived {p['timeout']} s)")
        module.fail_json(
            msg=f"{script}: psql outlived its time budget of {p['timeout']} s; "
            f"{stopped[-1] if stopped else 'its session may still be running'}.\n"
            "Outcome unknown: the run keeps its lease; read the state back with "
            "ansible-playbook stage2.yml --tags dryrun before anything else "
            "(docs/RUNBOOK.md#outcome-unknown)",
            stderr=stderr,
            outcome_unknown=True,
            **common,
            **outcome,
        )
    if rc != 0:
        msg = explain_error(stderr, preamble, script, body_lines=count_lines(body))
        if db_fence is not None and FENCE_REFUSED_TEXT in stderr:
            # The database saw a greater fencing token: another run holds the lease now.
            outcome["fenced"] = True
            msg = f"{msg}\n{FENCE_HINT}"
        module.fail_json(msg=msg, stderr=stderr, container=p["container"], **common, **outcome)

    parsed = parse_output(stdout)
    outcome.update(
        births=parsed["markers"].get("births"),
        result=parsed["result"],
        documents=parsed["documents"],
        other_lines=parsed["other_lines"],
        db_ms=parsed["db_ms"],
    )
    if "t1" not in parsed["markers"]:
        # psql exited 0 without reaching the wrapper's last line: the COMMIT may not have run.
        module.fail_json(
            msg=f"{script} ended before the wrapper's closing {effective.upper()} and end "
            "marker ran; treat the outcome as unknown and read the state back",
            stderr=stderr,
            **common,
            **outcome,
        )
    if p["expect_json"] and not parsed["documents"]:
        module.fail_json(
            msg=f"{script} printed no JSON document (expect_json is true); "
            f"other output: {parsed['other_lines'][-5:]}",
            stderr=stderr,
            **common,
            **outcome,
        )

    changed = staged_changed or reported_changed(
        parsed["result"], read_only=p["read_only"], transaction=p["transaction"]
    )
    verb = "rehearsed (rolled back)" if effective != p["transaction"] else "ran"
    module.exit_json(
        changed=changed,
        msg=f"{script} {verb} with transaction {effective}",
        **common,
        **outcome,
    )


if __name__ == "__main__":
    main()
