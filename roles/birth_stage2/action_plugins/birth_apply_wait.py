"""Action birth_apply_wait: wait for the apply running in the background on the VPS, printing
its progress (see library/birth_apply_wait.py for the documentation).

The apply's psql session runs as an Ansible async job (it goes on when the controller is
interrupted or its link lost: docs/RUNBOOK.md#controller-interrupted). Each round this action
asks the job's status (as ansible.builtin.async_status does) and, while it runs, reads the
apply's state through birth_sql in a read-only session with no lease and no advisory lock,
and prints one progress line per collection that moved. What the lines say is decided by the
role's filter_plugins/apply_status.py, unit-tested with the status lines.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

_STATUS = Path(__file__).resolve().parents[1] / "filter_plugins" / "apply_status.py"
_SPEC = importlib.util.spec_from_file_location("birth_stage2_apply_status", _STATUS)
apply_status = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(apply_status)

# How often the job's status is asked (one module run on the VPS each time).
POLL = 0.5

CONNECTION_KEYS = ("container", "db_name", "db_user", "db_password", "docker_bin")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("jid", "status_sql", "connection", "every", "label"))

    def _job(self, jid, mode, task_vars):
        async_dir = self._remote_expand_user(
            self.get_shell_option("async_dir", default="~/.ansible_async")
        )
        return self._execute_module(
            module_name="ansible.legacy.async_status",
            module_args={"jid": jid, "mode": mode, "_async_dir": async_dir},
            task_vars=task_vars,
        )

    def _state(self, args, task_vars):
        conn = {k: v for k, v in (args.get("connection") or {}).items() if k in CONNECTION_KEYS}
        if not conn.get("db_password"):
            conn.pop("db_password", None)
        out = self._execute_module(
            module_name="birth_sql",
            module_args={
                **conn,
                "sql": args["status_sql"],
                "read_only": True,
                "advisory_lock": False,
                "application_name": "birth_stage2:apply-progress",
                "timeout": 60,
            },
            task_vars=task_vars,
        )
        return None if out.get("failed") else out.get("result")

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        jid = args.get("jid")
        if not jid or not args.get("status_sql"):
            raise AnsibleActionFail("birth_apply_wait needs jid and status_sql")
        every = float(args.get("every", 5))
        label = args.get("label") or "apply"
        host = task_vars.get("inventory_hostname", "?")
        seen = {}
        printed = []
        display.display(
            f"[{host}] {label} runs in the background on the VPS (async job {jid}): an interrupted"
            " controller (Ctrl-C, a lost link) leaves it running to its end; read it with"
            " ansible-playbook playbooks/apply_status.yml (docs/RUNBOOK.md#controller-interrupted)"
        )
        # The job's status is asked every POLL seconds, so the play sees the end at once; the
        # apply's state (a psql session on the VPS) is read every `every` seconds.
        next_state = 0.0
        while True:
            job = self._job(jid, "status", task_vars)
            if job.get("finished") or (job.get("failed") and not job.get("started")):
                break
            if time.monotonic() >= next_state:
                state = self._state(args, task_vars)
                lines, seen = apply_status.progress_lines(state, seen)
                for line in lines:
                    display.display(f"[{host}] {label}: {line}")
                printed += lines
                next_state = time.monotonic() + every
            time.sleep(min(POLL, every))
        self._job(jid, "cleanup", task_vars)
        for key in ("ansible_job_id", "started", "finished", "results_file", "erased"):
            job.pop(key, None)
        result.update(job)
        result["progress"] = printed
        return result
