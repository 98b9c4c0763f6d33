"""Per-task wall time, for finding where a run's time goes (bench/, RUNBOOK).

Enable with ANSIBLE_CALLBACKS_ENABLED=task_timer; prints the slowest tasks at the end.
"""

from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_timer
type: aggregate
short_description: Prints each task's wall time, slowest first, at the end of the play
description:
  - Times every task from its start to the start of the next one (or the end of the run).
requirements:
  - enable in the callbacks_enabled setting
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._times: list[list] = []
        self._start = time.perf_counter()

    def _close(self):
        if self._times and self._times[-1][2] is None:
            self._times[-1][2] = time.perf_counter() - self._times[-1][1]

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self._times.append([task.get_name(), time.perf_counter(), None])

    def v2_playbook_on_stats(self, stats):
        self._close()
        total = time.perf_counter() - self._start
        self._display.display(f"task_timer: {len(self._times)} tasks, {total:.2f} s in all")
        for name, _, secs in sorted(self._times, key=lambda t: -(t[2] or 0))[:25]:
            self._display.display(f"  {secs:7.3f} s  {name}")
