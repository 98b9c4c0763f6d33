"""Action birth_guard: the birth invariant guard (documented in library/birth_guard.py).

A phase's assert that judges only Stage 2's own births (``attributed``, each counted inside
the transaction that made them, with no ``before`` snapshot to compare) reads no database:
this action judges it in Ansible's own worker with module_utils/birth_stage2_guard.py's
`judge_attributed`, the function the module runs, instead of starting the module on the VPS
(a new Python importing Ansible's module code: about 0.4 s a phase). Every other call (a
snapshot, an assert against a snapshot) runs the module on the host, as without this action.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path

from ansible.plugins.action import ActionBase

_UTILS = Path(__file__).resolve().parents[3] / "module_utils"
# birth_stage2_guard imports its quoting from ansible.module_utils.birth_stage2_psql, the
# name AnsiballZ gives it on a host: that name points at the file only while guard loads.
_PSQL = "ansible.module_utils.birth_stage2_psql"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_guard():
    had = sys.modules.get(_PSQL)
    try:
        sys.modules[_PSQL] = had or _load(_PSQL, _UTILS / "birth_stage2_psql.py")
        return _load("birth_stage2_guard", _UTILS / "birth_stage2_guard.py")
    finally:
        if had is None:
            sys.modules.pop(_PSQL, None)


guard = _load_guard()


def judged_here(args: Mapping) -> bool:
    """Whether the call needs no database: an assert of Stage 2's own births alone, with
    well-formed options (anything else goes to the module, which names what is wrong)."""
    return (
        args.get("action") == "assert"
        and args.get("invariant") in guard.INVARIANTS
        and isinstance(args.get("attributed"), Mapping)
        and args.get("before") is None
        and args.get("after") is None
        and all(
            args.get(k) is None or isinstance(args.get(k), Mapping)
            for k in ("expected_growth", "allowed")
        )
        and isinstance(args.get("label", ""), str)
        and (args.get("hint") is None or isinstance(args.get("hint"), str))
    )


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        if not judged_here(args):
            result.update(self._execute_module(module_name="birth_guard", task_vars=task_vars))
            return result
        label = args.get("label") or ""
        try:
            ok, msg, judged = guard.judge_attributed(
                label, args["invariant"], dict(args["attributed"]),
                None if args.get("expected_growth") is None else dict(args["expected_growth"]),
                dict(args.get("allowed") or {}),
                args.get("hint"),
            )  # fmt: skip
        except ValueError as exc:
            result.update(failed=True, changed=False, msg=f"birth guard after '{label}': {exc}")
            return result
        result.update(judged, changed=False, msg=msg)
        if not ok:
            result["failed"] = True
        return result
