"""A failed run, as plain functions: which phase and step stopped it, what it had committed
before, and which runbook section and next command the on-call needs.

The runbook is the one table of failures: its `You see` lines quote the messages each
section covers (tests/test_runbook.py keeps them the code's), so the section is the one
whose longest quoted fragment the message contains. Used by tasks/failed.yml through the
`birth_stage2_failure` filter; unit-tested in tests/unit/test_failure.py.
"""

from __future__ import annotations

import re

# The phases in run order (tasks/main.yml); apply and rollback run only when asked by tag.
PHASES = (
    "preflight", "stage", "classify", "views", "plan", "dryrun", "rehearse", "decide",
    "verify", "apply", "report", "rollback", "finish",
)  # fmt: skip
ALWAYS = ("preflight", "finish")
NEVER = ("apply", "rollback")
FALLBACK_NEXT = "ansible-playbook stage2.yml --tags dryrun"


def squash(text):
    return re.sub(r"\s+", " ", text or "").strip()


def slug(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_sections(text):
    """{slug: {'title', 'fragments', 'next'}} of each `###` section under `## Failures`."""
    if "\n## Failures" not in (text or ""):
        return {}
    part = re.split(r"(?m)^## ", text.split("\n## Failures", 1)[1], maxsplit=1)[0]
    out = {}
    for block in re.split(r"(?m)^### ", part)[1:]:
        title, _, body = block.partition("\n")
        fragments = []
        for line in body.splitlines():
            if line.startswith("You see"):
                fragments += re.findall(r"`([^`]+)`", line)
        after = body.split("Next:", 1)[1] if "Next:" in body else ""
        commands = [c for c in re.findall(r"`([^`]+)`", after) if c.startswith("ansible-playbook")]
        out[slug(title)] = {
            "title": title.strip(),
            "fragments": fragments,
            "next": commands[0] if commands else FALLBACK_NEXT,
        }
    return out


def section_for(message, sections):
    """The slug whose longest quoted fragment the message contains (None when none does)."""
    text = squash(message)
    best, length = None, 0
    for name, section in sections.items():
        for fragment in section["fragments"]:
            if squash(fragment) in text and len(fragment) > length:
                best, length = name, len(fragment)
    return best


def selected_phases(run_tags, skip_tags=()):
    tags = set(run_tags or ["all"])
    out = []
    for phase in PHASES:
        wanted = phase in ALWAYS or phase in tags or ("all" in tags and phase not in NEVER)
        if wanted and phase not in (skip_tags or ()):
            out.append(phase)
    return out


def failed_phase(done, run_tags, skip_tags=()):
    """The phase that was running: the first one selected for this run not recorded done."""
    for phase in selected_phases(run_tags, skip_tags):
        if phase not in (done or []):
            return phase
    return "finish"


def committed_before(done, writes, check_mode, apply_result=None):
    """What earlier phases of this run committed (the failed step itself committed nothing
    of its own: one transaction; an apply keeps the batches it finished)."""
    if check_mode:
        return ["nothing: check mode rolled every write back"]
    writes = writes or {}
    out = []
    if "stage" in (done or []):
        out.append("the SQL files staged on the VPS")
    # A step that returned registered its result even when its phase was cut short after it
    # (the link died in the verify that follows): what it wrote counts.
    if writes.get("classified"):
        out.append(f"the classification of {writes['classified']} collections (reversible)")
    if writes.get("views_changed"):
        out.append("the Stage 2 views (reversible)")
    if "plan" in (done or []):
        out.append("the plan's ledger rows, if they were new (reversible)")
    if apply_result:
        out.append("the apply batches that finished before it (births stay)")
    return out or ["nothing"]


def step_outcome(phase, unreachable, check_mode):
    """What the failing step itself left behind."""
    if check_mode:
        return "nothing: in check mode every write is rolled back"
    if unreachable:
        return (
            "unknown: the link to the VPS died while it ran; it is one transaction, so the "
            "database committed all of it or none of it (psql may still be finishing inside "
            "the container): read the state back with the next command"
        )
    if phase == "apply":
        return (
            "the batches the apply finished stay (births are never undone); "
            "the failing one was rolled back"
        )
    return "nothing: it is one transaction, rolled back when it fails"


def failure(task, result, done, run_tags, skip_tags, runbook, writes, check_mode, run_id,
            confirm="", apply_result=None, unreachable=False):  # fmt: skip
    """Everything the failed run's checkpoint and final message say about the failure."""
    result = result or {}
    message = str(result.get("msg") or result.get("message") or "") or squash(
        str(result.get("stderr") or "")
    )
    if not message and not result:
        # No result of its own: the host was stopped with the play (any_errors_fatal).
        message = (
            "stopped because another host of the play failed (any_errors_fatal): this host's "
            "step did not fail, and nothing more ran here"
        )
    elif not message:
        message = "the step failed without a message"
    if unreachable and not message.startswith("UNREACHABLE!"):
        # As Ansible prints it (fatal: [host]: UNREACHABLE! => ...).
        message = f"UNREACHABLE! {message}"
    sections = runbook_sections(runbook)
    name = section_for(message, sections)
    section = sections.get(name) if name else None
    command = section["next"] if section else FALLBACK_NEXT
    # RUN_ID is the confirmed dry-run of an apply, or this run (its lease, its evidence); a
    # held lock is another run's, which the message names.
    if confirm or name != "lock-held":
        command = command.replace("RUN_ID", confirm or run_id)
    phase = failed_phase(done, run_tags, skip_tags)
    return {
        "phase": phase,
        "step": (task or {}).get("name") or "(unnamed task)",
        "message": message,
        "runbook": f"docs/RUNBOOK.md#{name}" if name else "docs/RUNBOOK.md#failures",
        "runbook_title": section["title"] if section else "Failures",
        "next": command,
        "committed_before": committed_before(done, writes, check_mode, apply_result),
        "outcome": step_outcome(phase, unreachable, check_mode),
    }


def lost_summary(record, facts, host, failure_facts, finished_at):
    """summary.json of a run whose link to the VPS died: what the controller knew by then
    (the same keys as templates/summary.json.j2, figures it never read left null)."""
    snap = ((facts.get("__birth_stage2_snap_before") or {}).get("snapshot")) or {}
    return {
        "run_id": record["run_id"],
        "started_at": record["started_at"],
        "finished_at": finished_at,
        "inventory_host": host,
        "status": "FAILED",
        "failure": failure_facts,
        "mode": record["mode"],
        "phases": list(facts.get("__birth_stage2_phases") or []),
        "births": {"before": snap.get("total"), "after": None},
        "identity": None,
        "dryrun": None,
        "plan": None,
        "rehearsal": None,
        "decision": facts.get("__birth_stage2_decision"),
        "apply": facts.get("__birth_stage2_apply"),
        "evidence": None,
        "guards": facts.get("__birth_stage2_guard_summary"),
        "counters": {"before": snap.get("counters"), "after": None},
        "staging_dir": record["staging_dir"],
        "timings": {"dryrun_db_ms": None},
        "preflight": None,
        "writes": lost_writes(facts),
        "footprint": None,
        "report": None,
    }


def lost_writes(facts):
    """The writes summary.json.j2 records, from the registered results the run kept."""
    classify = facts.get("__birth_stage2_classify") or {}
    views = facts.get("__birth_stage2_views_result") or {}
    return {
        "classified": (classify.get("result") or {}).get("classified") if classify else None,
        "views_changed": views.get("changed") if views else None,
    }


class FilterModule:
    def filters(self):
        return {"birth_stage2_failure": failure}
