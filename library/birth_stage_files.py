#!/usr/bin/python
"""birth_stage_files: put a set of rendered SQL files on the VPS in one round trip."""

from __future__ import annotations

DOCUMENTATION = r"""
module: birth_stage_files
short_description: Stage rendered SQL files on the VPS, in one call
description:
  - Writes every file of O(files) into O(dest) (created with mode 0750 when missing), each
    with O(mode), atomically (a temporary file renamed over the old one), and only when its
    content differs. One SSH round trip for the whole set, where one template task per file
    would cost a round trip each.
  - Files of O(dest) that are not in O(files) are left alone.
  - Check mode reports which files would be written and writes nothing.
version_added: "1.0.0"
author: birth-stage2
options:
  dest:
    description: The staging directory on the host (absolute path).
    type: path
    required: true
  files:
    description:
      - File name (no directory part) -> text. Names may not contain C(/) or start with a dot.
    type: dict
    required: true
  mode:
    description: Mode of each staged file.
    type: str
    default: "0640"
  owner:
    description: Owner of the files and the directory (default the SSH user).
    type: str
  group:
    description: Group of the files and the directory.
    type: str
"""

EXAMPLES = r"""
- name: Stage every SQL file of the plan
  birth_stage_files:
    dest: /opt/incomex/docs/mcp-writes/birth-stage2-2026-06-06
    files:
      01_classify.sql: "{{ lookup('ansible.builtin.template', 'sql/deploy/01_classify.sql.j2') }}"
      99_rollback_stage2.sql: "{{ lookup('ansible.builtin.template', 'sql/deploy/99.sql.j2') }}"
"""

RETURN = r"""
written:
  description: The files that were (or, in check mode, would be) created or rewritten.
  returned: always
  type: list
  elements: str
  sample: ["01_classify.sql"]
unchanged:
  description: The files whose content was already what was asked.
  returned: always
  type: list
  elements: str
  sample: ["10_dryrun_numbers.sql"]
dest:
  description: The staging directory.
  returned: always
  type: str
  sample: /opt/incomex/docs/mcp-writes/birth-stage2-2026-06-06
"""

import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.birth_stage2_files import (  # noqa: E402
    bad_names,
    plan_writes,
    read_text,
    write_atomically,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "dest": {"type": "path", "required": True},
            "files": {"type": "dict", "required": True},
            "mode": {"type": "str", "default": "0640"},
            "owner": {"type": "str"},
            "group": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    dest = p["dest"]
    if not os.path.isabs(dest):
        module.fail_json(msg=f"dest must be an absolute path on the host, got {dest!r}")
    bad = bad_names(p["files"])
    if bad:
        module.fail_json(msg=f"not plain file names: {bad}", dest=dest)
    try:
        mode = int(p["mode"], 8)
    except ValueError:
        module.fail_json(msg=f"mode {p['mode']!r} is not an octal mode such as 0640")
    files = {k: str(v) for k, v in p["files"].items()}
    to_write, unchanged = plan_writes(dest, files, read_text)
    changed = bool(to_write) or not os.path.isdir(dest)
    if module.check_mode:
        module.exit_json(changed=changed, written=to_write, unchanged=unchanged, dest=dest)
    try:
        if not os.path.isdir(dest):
            os.makedirs(dest, mode=0o750)
        for name in to_write:
            write_atomically(os.path.join(dest, name), files[name], mode)
    except OSError as exc:
        module.fail_json(msg=f"cannot stage into {dest}: {exc}", dest=dest, written=to_write)
    file_args = {"owner": p["owner"], "group": p["group"]}
    if p["owner"] or p["group"]:
        for path in [dest] + [os.path.join(dest, n) for n in files]:
            changed = module.set_fs_attributes_if_different(dict(file_args, path=path), changed)
    module.exit_json(changed=changed, written=to_write, unchanged=unchanged, dest=dest)


if __name__ == "__main__":
    main()
