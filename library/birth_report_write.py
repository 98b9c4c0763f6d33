#!/usr/bin/python
"""Ansible module birth_report_write: its documentation (the work is the action plugin's)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: birth_report_write
short_description: Write a run's record (report files, latest links) on the controller
description:
  - Creates O(dest) (and its missing parents) with O(dir_mode), writes every file of O(files)
    into it with O(mode), atomically (a temporary file in O(dest) renamed over the old one)
    and only when its content differs, then points each link of O(links) at its target,
    replacing what was there in one rename (a temporary link renamed over it).
  - Everything happens on the controller, in the worker that runs the task - no module is
    executed and no connection is used, so it costs no forked interpreter. It is how the
    role writes C(reports/<run_id>/) (the checkpoint, the evidence files, C(summary.json))
    and the C(reports/latest) links.
  - "Writes also in check mode (the role's tasks say C(check_mode: false) as well): a run's
    record is written for a check run too, and is not a change to the VPS."
  - "Returns C(changed) when it created or rewrote anything; the role's tasks say
    C(changed_when: false), as a run's own record is not a change to the VPS."
  - File and link names must be plain names (no C(/), no leading dot, not empty), the rules
    of C(birth_stage_files) (C(module_utils/birth_stage2_files.py)). Files of O(dest) not in
    O(files) are left alone.
  - Runs as an action plugin (C(roles/birth_stage2/action_plugins/birth_report_write.py)) on
    the controller; this file only documents it.
author:
  - Birth Stage 2 automation
options:
  dest:
    description:
      - The report directory on the controller, an absolute path (a relative one is refused).
    type: path
    required: true
  files:
    description: File name (no directory part) -> text.
    type: dict
    required: true
  mode:
    description: Mode of each written file (also set on a file whose content was already right).
    type: raw
    default: "0640"
  dir_mode:
    description: Mode of O(dest) and of each parent it creates.
    type: raw
    default: "0750"
  links:
    description:
      - Link name (no directory part) -> target, exactly as the link should read (a relative
        target is relative to the link's directory). A link already pointing there is left alone;
        any other link or file of that name is replaced.
    type: dict
    default: {}
  links_dir:
    description: The directory the links are made in (absolute); by default the parent of O(dest).
    type: path
"""

EXAMPLES = r"""
- name: Write summary.json and point reports/latest-<host> and reports/latest at this run
  birth_report_write:
    dest: "{{ birth_stage2_reports_dir }}/{{ __birth_stage2_run_id }}"
    files:
      summary.json: "{{ __birth_stage2_summary | to_nice_json(indent=2) }}\n"
    links:
      latest: "{{ __birth_stage2_run_id }}"
  check_mode: false
  changed_when: false
"""

RETURN = r"""
dest:
  description: The report directory (normalised).
  returned: always
  type: str
  sample: /srv/birth-stage2/reports/20260606T101500123456Z-vps1
written:
  description: The files that were created or rewritten.
  returned: always
  type: list
  elements: str
  sample: ["00_checkpoint.md", "summary.json"]
unchanged:
  description: The files whose content was already what was asked.
  returned: always
  type: list
  elements: str
  sample: []
links:
  description: Each link's path -> its target, as they stand after the task.
  returned: always
  type: dict
  sample: {"/srv/birth-stage2/reports/latest": "20260606T101500123456Z-vps1"}
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.birth_stage2_files import REPORT_WRITE_SPEC  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=REPORT_WRITE_SPEC,
        supports_check_mode=True,
    )
    module.fail_json(msg="birth_report_write runs as the role's action plugin, not as a module")


if __name__ == "__main__":
    main()
