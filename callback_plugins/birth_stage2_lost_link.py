"""The record of a Stage 2 run whose link to the VPS died.

Ansible runs no task, not even a rescue, for a host that became unreachable, so the role
cannot write a failed run's checkpoint then. This callback does it on the controller at the
end of the play, for each host whose first unreachable task was one of the birth_stage2
role's and whose run left no record yet: reports/<run_id>/00_checkpoint.md (the role's own
template, templates/checkpoint_failed.md.j2) and summary.json, from what the run had kept
(preflight's __birth_stage2_record, the phases done, the first birth snapshot). What to say
is decided by the role's filter_plugins/failure.py, as for every other failed run.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
from pathlib import Path

import jinja2
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: birth_stage2_lost_link
type: aggregate
short_description: Writes the failed-run checkpoint of a Stage 2 run whose VPS became unreachable
description:
  - On by default (it acts only on unreachable tasks of the birth_stage2 role).
"""

ROLE = "birth_stage2"


def _plain(value):
    """Ansible's cached facts as plain JSON data."""
    return json.loads(json.dumps(value, default=str))


def _load_failure(role_path):
    path = Path(role_path) / "filter_plugins" / "failure.py"
    spec = importlib.util.spec_from_file_location("birth_stage2_failure_callback", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_checkpoint(role_path, variables):
    """templates/checkpoint_failed.md.j2 with plain Jinja2 and the few Ansible filters and
    tests it (and report/_md.j2) use."""
    env = jinja2.Environment(  # noqa: S701 - Markdown for the knowledge base, not HTML
        loader=jinja2.FileSystemLoader(str(Path(role_path) / "templates")),
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["to_json"] = json.dumps
    env.filters["basename"] = os.path.basename
    env.tests["directory"] = os.path.isdir
    return env.get_template("checkpoint_failed.md.j2").render(**variables)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "birth_stage2_lost_link"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self):
        super().__init__()
        self._play = None
        self._lost = {}

    def v2_playbook_on_play_start(self, play):
        self._play = play

    def v2_runner_on_unreachable(self, result):
        task = result._task
        role = getattr(task, "_role", None)
        if role is None or role.get_name() != ROLE:
            return
        self._lost.setdefault(result._host.get_name(), (task, role._role_path, result._result))

    def v2_playbook_on_stats(self, stats):
        for host, (task, role_path, result) in self._lost.items():
            try:
                path = self._write(host, task, role_path, result)
            # A record that cannot be written must not hide the failure itself.
            except Exception as exc:
                self._display.warning(f"birth_stage2: could not write the record of {host}: {exc}")
                continue
            if path:
                self._display.display(
                    f"birth_stage2: the link to {host} was lost; checkpoint {path}", stderr=True
                )

    def _write(self, host, task, role_path, result):
        facts = self._play.get_variable_manager()._nonpersistent_fact_cache.get(host, {})
        facts = {k: _plain(v) for k, v in facts.items() if k.startswith("__birth_stage2_")}
        record = facts.get("__birth_stage2_record")
        if not record:
            return None  # the run was not named yet: nothing of it exists to record
        run_dir = Path(record["reports_dir"]) / record["run_id"]
        if (run_dir / "summary.json").exists():
            return None  # the run wrote its own record (finished, or failed and rescued)
        fl = _load_failure(role_path)
        runbook = Path(role_path).parent.parent / "docs" / "RUNBOOK.md"
        facts_of = fl.lost_writes(facts)
        failure = fl.failure(
            {"name": task.name or task.get_name()},
            _plain(result),
            facts.get("__birth_stage2_phases") or [],
            record["run_tags"],
            record["skip_tags"],
            runbook.read_text(encoding="utf-8") if runbook.is_file() else "",
            facts_of,
            record["mode"] == "check",
            record["run_id"],
            record.get("confirm") or "",
            facts.get("__birth_stage2_apply"),
            unreachable=True,
        )
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        summary = fl.lost_summary(record, facts, host, failure, now)
        checkpoint = render_checkpoint(
            role_path,
            {
                "__birth_stage2_summary": summary,
                "__birth_stage2_failure": failure,
                "birth_stage2_plan_code": record["plan_code"],
                "birth_stage2_operator": record["operator"],
                "birth_stage2_db_name": record["db_name"],
                "birth_stage2_container": record["container"],
                "birth_stage2_reports_dir": record["reports_dir"],
            },
        )
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        for name, text in (
            ("00_checkpoint.md", checkpoint),
            ("summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n"),
        ):
            (run_dir / name).write_text(text, encoding="utf-8")
            (run_dir / name).chmod(0o640)
        return run_dir / "00_checkpoint.md"
