"""The apply's state as lines for an on-call (playbooks/apply_status.yml; unit-tested).

The input is what ``tasks/apply_status.yml`` reads in one read-only session: the control
row, the apply sessions running, and per collection the ledger row with its batches.

No Ansible import: errors are ValueError, so the unit tests load this file as plain Python.
"""

from __future__ import annotations


def _eta(seconds):
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def row_line(row):
    """One collection: done/total, percent, batches, rate, ETA, the last batch's rows."""
    total, done = int(row["total"]), int(row["done"])
    line = f"{row['collection']} {done}/{total} ({row['status']}"
    if row.get("percent") is not None:
        line += f", {float(row['percent']):g}%"
    line += f"), {int(row.get('batches') or 0)} batch(es)"
    rate = row.get("per_second")
    if rate:
        line += f", {float(rate):g} births/s"
        if row["status"] not in ("done", "failed") and done < total:
            line += f", ETA {_eta((total - done) / float(rate))}"
    if row.get("last_batch_rows") is not None:
        line += f", last batch read {int(row['last_batch_rows'])} rows"
    return line


def status_lines(result, plan_code):
    """Every line of the status, the control and the running session first."""
    if not isinstance(result, dict):
        raise ValueError(f"apply status must be a mapping, got {result!r}")
    if not result.get("deployed"):
        return [f"{plan_code}: no apply has been deployed on this database (nothing to show)"]
    control = result.get("control") or {}
    state = control.get("state") or "run"
    if control:
        why = f": {control['reason']}" if control.get("reason") else ""
        who = f"set by {control.get('set_by')} at {control.get('set_at')}{why}"
        lines = [f"{plan_code} control: {state} ({who})"]
    else:
        lines = [f"{plan_code} control: run (never steered)"]
    running = result.get("running") or []
    if running:
        for r in running:
            held = "paused, holding between batches" if r.get("waiting") == "PgSleep" else "running"
            lines.append(
                f"apply session pid {r['pid']} ({r['session']}), since {r['since']}: {held}"
            )
    else:
        lines.append("no apply session is running")
    rows = result.get("rows") or []
    lines += [row_line(r) for r in rows]
    done = sum(int(r["done"]) for r in rows)
    total = sum(int(r["total"]) for r in rows)
    lines.append(f"total: {done}/{total} births applied")
    return lines


class FilterModule:
    def filters(self):
        return {"birth_stage2_apply_status_lines": status_lines}
