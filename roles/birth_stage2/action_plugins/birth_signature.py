"""Action birth_signature: sign a Stage 2 act, or say who signed one (documented in
library/birth_signature.py).

The work is module_utils/birth_stage2_signature.py's `run_act`, shared with the module. The
role runs every signature on the controller (delegate_to: localhost), where the keys and
allowed_signers are; there this action calls `run_act` in Ansible's own worker instead of
starting the module in a new Python (each start imports Ansible's module code: about 0.3 s
of CPU, for every record a gate verifies). On any other host the module runs there, as it
would without this action.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ansible.plugins.action import ActionBase

_UTILS = Path(__file__).resolve().parents[3] / "module_utils" / "birth_stage2_signature.py"
_SPEC = importlib.util.spec_from_file_location("birth_stage2_signature", _UTILS)
signature = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(signature)


def runs_on_controller(transport: str) -> bool:
    """Whether the task's connection is the controller itself (delegate_to: localhost)."""
    return transport == "local"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        if not runs_on_controller(getattr(self._connection, "transport", "")):
            result.update(self._execute_module(module_name="birth_signature", task_vars=task_vars))
            return result
        _, params = self.validate_argument_spec(
            argument_spec=signature.ARGUMENT_SPEC, required_if=signature.REQUIRED_IF
        )
        try:
            result.update(signature.run_act(params))
        except signature.SignatureError as exc:
            result.update(failed=True, msg=f"birth_signature ({params['act']}): {exc}")
            return result
        result["changed"] = False
        return result
