#!/usr/bin/python
"""Ansible module birth_run_lock: a run-level lease so that two Stage 2 runs never overlap."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: birth_run_lock
short_description: Hold, check or release the Stage 2 run lease on the VPS host
description:
  - The advisory lock of M(birth_sql) covers one psql session only; a Stage 2 run is many
    sessions with Ansible in between. This module keeps a lease file on the host that one
    run holds from its first phase to its last, so a second run is refused with a message
    naming the holder.
  - The lease is JSON - C(run_id), C(owner), C(acquired_at), C(refreshed_at) (UTC).
    V(acquired) creates it atomically (the content is written to a temporary file first,
    then hard-linked into place, so a lease is never seen half written); by the same run it
    only refreshes C(refreshed_at) (a heartbeat, reported as unchanged).
  - Each lease carries a fencing C(token), an integer issued when the lease is created or
    broken (taken over) and kept by every refresh - strictly greater than every token issued
    before on that path (the counter file C(<path>.token) next to the lease, written
    atomically) and never below the current time in milliseconds. M(birth_sql) records it
    in the database with every write, so a run whose lease was broken is refused there at
    its next write.
  - A lease held by another run is never taken over, even when it looks stale (no refresh
    for O(stale_after) seconds); the failure says so and tells how to break it
    (O(break_run_id), from C(-e birth_stage2_break_lock=<run id>)).
author:
  - Birth Stage 2 automation
options:
  path:
    description:
      - Lease file on the host. Its directory must exist.
    type: path
    required: true
  run_id:
    description: Identifier of this run (the same for every task of the run).
    type: str
    required: true
  owner:
    description: Who runs it (for example C(user@controller)), recorded for the message
      another run gets.
    type: str
  state:
    description:
      - V(acquired) takes the lease or refreshes it; fails when another run holds it.
      - V(released) removes the lease when this run holds it; does nothing when there is
        none, and leaves another run's lease in place (with a warning).
      - V(checked) only reads; fails when another run holds the lease.
    type: str
    choices: [acquired, released, checked]
    default: acquired
  stale_after:
    description:
      - Seconds without a refresh after which a lease is called stale in messages. A stale
        lease is still refused, never taken over silently.
    type: int
    default: 1800
  break_run_id:
    description:
      - Remove the lease held by this run id (an operator's explicit decision, after making
        sure that run is dead). With V(acquired), the lease is then taken for O(run_id).
      - Has no effect when the lease is held by any other run id.
    type: str
attributes:
  check_mode:
    support: full
    description:
      - V(acquired) and V(released) write nothing and report what they would do;
        refusals fail exactly as in a real run. V(checked) behaves normally.
  diff_mode:
    support: none
notes:
  - Release the lease in an C(always) section so a failed run does not leave it behind;
    a run killed outright leaves it, and the next run names it.
seealso:
  - module: birth_sql
"""

EXAMPLES = r"""
- name: Take the Stage 2 run lease (refreshed by every phase)
  birth_run_lock:
    path: "{{ birth_stage2_stage_dir }}/.run.lock"
    run_id: "{{ birth_stage2_run_id }}"
    owner: "{{ lookup('ansible.builtin.env', 'USER') }}@{{ birth_stage2_controller_name }}"
    break_run_id: "{{ birth_stage2_break_lock | default(omit) }}"

- name: Release it at the end of the run
  birth_run_lock:
    path: "{{ birth_stage2_stage_dir }}/.run.lock"
    run_id: "{{ birth_stage2_run_id }}"
    state: released
"""

RETURN = r"""
action:
  description: What was decided - V(create), V(refresh), V(break), V(remove), V(noop),
    V(ours), V(free), V(fail_held) or V(fail_stale).
  returned: always
  type: str
  sample: create
lease:
  description: The lease in place after the task (what would be in place, in check mode);
    null when there is none.
  returned: always
  type: dict
  sample: {"run_id": "20251126T024100-ab12", "owner": "ops@laptop",
           "acquired_at": "2025-11-26T02:41:00Z", "refreshed_at": "2025-11-26T02:55:13Z",
           "token": 1764124860000}
holder:
  description: Run id holding the lease before the task ran (null when none).
  returned: always
  type: str
  sample: 20251126T024100-ab12
lock_path:
  description: The lease file (not C(path), so Ansible adds no file attributes to the result).
  returned: always
  type: str
  sample: /opt/incomex/docs/mcp-writes/birth-stage2-2025-11-26/.run.lock
msg:
  description: What happened, or who holds the lease and how to break it.
  returned: always
  type: str
  sample: "Stage 2 run lock /opt/.../.run.lock acquired for run 20251126T024100-ab12"
"""

# Ansible's layout puts the documentation first, hence the imports below it (E402).
import os  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.birth_stage2_lock import (  # noqa: E402
    BREAK,
    CREATE,
    FAILURES,
    NOOP,
    REFRESH,
    REMOVE,
    STATES,
    create_lease,
    decide,
    issue_token,
    lease_token,
    new_lease,
    next_token,
    read_lease,
    read_token,
    remove_lease,
    replace_lease,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "run_id": {"type": "str", "required": True},
            "owner": {"type": "str"},
            "state": {"type": "str", "choices": list(STATES), "default": "acquired"},
            "stale_after": {"type": "int", "default": 1800},
            "break_run_id": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    path, run_id = p["path"], p["run_id"]
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        module.fail_json(msg=f"directory {directory} of the run lock {path} does not exist")

    try:
        existing = read_lease(path)
        now = time.time()
        action, message = decide(
            existing, run_id, now, p["stale_after"], p["break_run_id"], p["state"], path
        )
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"Stage 2 run lock {path}: {exc}")
    holder = existing.get("run_id") if existing else None
    result = {"action": action, "lock_path": path, "holder": holder, "lease": existing}

    if action in FAILURES:
        module.fail_json(msg=message, **result)

    def token():
        """A new fencing token (in check mode only what it would be: nothing is written)."""
        if module.check_mode:
            seen = [t for t in (read_token(path), lease_token(existing)) if t]
            return next_token(max(seen, default=None), now)
        return issue_token(path, now, floor=lease_token(existing))

    lease = existing
    try:
        if action in (CREATE, BREAK):
            lease = new_lease(run_id, now, p["owner"], token=token())
        elif action == REFRESH:
            # A refresh keeps the token (a lease written before tokens existed gets one).
            owner = p["owner"] or existing.get("owner")
            kept = lease_token(existing) or token()
            lease = new_lease(run_id, now, owner, existing.get("acquired_at"), token=kept)
        elif action == REMOVE:
            lease = None
    except OSError as exc:
        module.fail_json(msg=f"Stage 2 run lock {path}: fencing token: {exc}", **result)
    result["lease"] = lease

    if module.check_mode:
        result["changed"] = action in (CREATE, BREAK, REMOVE)
        module.exit_json(msg=f"check mode, nothing written (would {action}): {message}", **result)

    try:
        if action == BREAK:
            remove_lease(path)
        if action in (CREATE, BREAK) and not create_lease(path, lease):
            # Another run won the race between our read and our create: report that run.
            existing = read_lease(path)
            action, message = decide(
                existing, run_id, time.time(), p["stale_after"], None, p["state"], path
            )
            holder = existing.get("run_id") if existing else None
            if action not in FAILURES:
                message = f"Stage 2 run lock {path} changed while being taken; rerun the play"
            module.fail_json(
                msg=message, action=action, lock_path=path, holder=holder, lease=existing
            )
        if action == REFRESH:
            replace_lease(path, lease)
        if action == REMOVE:
            remove_lease(path)
    except OSError as exc:
        module.fail_json(msg=f"Stage 2 run lock {path}: {exc}", **result)

    if action == NOOP and existing is not None:
        module.warn(message)
    module.exit_json(changed=action in (CREATE, BREAK, REMOVE), msg=message, **result)


if __name__ == "__main__":
    main()
