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
    """One collection: done/total, percent, batches, rate, ETA, last batch, throttle, retries."""
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
        if row.get("last_batch_ms") is not None:
            line += f" in {float(row['last_batch_ms']):g} ms"
    if row.get("throttled_s"):
        line += f", throttled {float(row['throttled_s']):g} s"
    if row.get("retried"):
        line += f", {int(row['retried'])} batch(es) retried after a lock timeout"
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
    if control.get("throttle"):
        lines.append(f"throttled since {control.get('throttle_since')}: {control['throttle']}")
    elif control:
        lines.append("not throttled")
    if control.get("batch_rows") is not None:
        lines.append(f"next batch aims at {int(control['batch_rows'])} rows")
    running = result.get("running") or []
    if running:
        for r in running:
            held = "running"
            if r.get("waiting") == "PgSleep" and state == "pause":
                held = "paused, holding between batches"
            elif r.get("waiting") == "PgSleep" and control.get("throttle"):
                held = "throttled, holding between batches"
            elif r.get("waiting"):
                held = f"running (waiting on {r['waiting']})"
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


def progress_lines(result, seen):
    """The apply's progress while it runs: a line per collection whose births or status moved
    since ``seen`` (what the last round saw), and the throttle when it starts, changes or
    ends. Returns (lines, what this round saw). An unreadable state (None) prints nothing."""
    if not isinstance(result, dict) or not result.get("deployed"):
        return [], dict(seen)
    now = dict(seen)
    lines = []
    control = result.get("control") or {}
    throttle = control.get("throttle") or ""
    if throttle != seen.get("__throttle", ""):
        lines.append(f"throttled: {throttle}" if throttle else "no longer throttled")
        now["__throttle"] = throttle
    if control.get("state") != seen.get("__state", "run"):
        lines.append(f"control: {control.get('state')} (set by {control.get('set_by')})")
        now["__state"] = control.get("state")
    for row in result.get("rows") or []:
        mark = (int(row["done"]), row["status"])
        started = row["collection"] in seen or row["status"] != "planned"
        if started and list(mark) != list(seen.get(row["collection"], [])):
            lines.append(row_line(row))
        now[row["collection"]] = list(mark)
    return lines, now


class FilterModule:
    def filters(self):
        return {"birth_stage2_apply_status_lines": status_lines}
