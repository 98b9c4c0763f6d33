#!/usr/bin/python
"""Ansible module birth_apply_wait: its documentation (the work is the action plugin's)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: birth_apply_wait
short_description: Wait for the Stage 2 apply running on the VPS, printing its progress
description:
  - The apply's psql session runs as an Ansible async job on the VPS (C(async) with C(poll=0)),
    so it goes on when the controller is interrupted (Ctrl-C) or its link is lost, and
    stops only when it is done, aborted (C(playbooks/apply_control.yml)), or past its time
    budget.
  - This action waits for that job. Every O(every) seconds it reads the apply's state in a
    read-only session (no lease, no advisory lock, so it never waits for the apply) and prints
    one line per collection that moved - births done/total, percent, batches, births/s, ETA,
    the last batch's rows and time - and the throttle when it changes.
  - The job's status is asked every half second (at most every O(every) seconds), so the play
    goes on as soon as the apply ends, not up to O(every) seconds later.
  - When the job ends, the task's result is the job's (the apply's C(birth_sql) result), and
    the job's status file on the VPS is removed.
  - Runs as an action plugin (C(roles/birth_stage2/action_plugins/birth_apply_wait.py)) on
    the controller; this file only documents it.
author:
  - Birth Stage 2 automation
options:
  jid:
    description: The async job id of the apply task (its C(ansible_job_id)).
    type: str
    required: true
  status_sql:
    description:
      - The read-only SQL that returns the apply's state (C(sql/probe/apply_status.sql.j2)).
    type: str
    required: true
  connection:
    description:
      - How to reach the database for the status reads - C(container), C(db_name),
        C(db_user), C(db_password) (empty is none) and C(docker_bin), as for C(birth_sql).
    type: dict
    required: true
  every:
    description: Seconds between two status reads.
    type: float
    default: 5
  label:
    description: Prefix of the progress lines.
    type: str
    default: apply
"""

EXAMPLES = r"""
- name: Apply (in the background on the VPS)
  birth_sql:
    sql: CALL my_schema.my_apply('c', 5000, 7);
    transaction: none
  async: 21900
  poll: 0
  register: apply_job

- name: Wait for it, printing its progress
  birth_apply_wait:
    jid: "{{ apply_job.ansible_job_id }}"
    status_sql: "{{ lookup('ansible.builtin.template', 'sql/probe/apply_status.sql.j2') }}"
    connection: "{{ __birth_stage2_watch_connection }}"
  register: apply_calls
"""

RETURN = r"""
progress:
  description: The progress lines printed while the apply ran.
  type: list
  elements: str
  returned: always
result:
  description: The apply's own C(birth_sql) result (its last JSON document).
  type: raw
  returned: when the apply ended
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec={
            "jid": {"type": "str", "required": True},
            "status_sql": {"type": "str", "required": True},
            "connection": {"type": "dict", "required": True},
            "every": {"type": "float", "default": 5},
            "label": {"type": "str", "default": "apply"},
        },
        supports_check_mode=True,
    )
    module.fail_json(msg="birth_apply_wait runs as the role's action plugin, not as a module")


if __name__ == "__main__":
    main()
