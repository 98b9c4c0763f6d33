"""The Stage 2 run lease on the VPS host, as plain functions.

The advisory lock of ``birth_stage2_psql`` covers one psql session; a Stage 2 run is many
sessions with Ansible between them. The lease (a small JSON file on the host) covers the
whole run: one run holds it from preflight to report, and any other run is refused with a
message naming the holder. A lease that looks abandoned is never taken over silently: the
operator breaks it by naming its run id (``break_run_id``).

``decide`` is pure (no I/O, ``now`` passed in) so every case is a row in a unit test; the
module only reads the file, calls ``decide`` and carries out the action.
"""

from __future__ import annotations

import calendar
import json
import time

STATES = ("acquired", "released", "checked")

# Actions decide() returns. The module writes only for create/refresh/break/remove.
CREATE, REFRESH, BREAK, REMOVE = "create", "refresh", "break", "remove"
NOOP, OURS, FREE = "noop", "ours", "free"
FAIL_HELD, FAIL_STALE = "fail_held", "fail_stale"
FAILURES = (FAIL_HELD, FAIL_STALE)
WRITES = (CREATE, REFRESH, BREAK, REMOVE)

# run id recorded for a lease file that is not valid JSON (an operator can break it by name).
UNREADABLE = "UNREADABLE"
_ISO = "%Y-%m-%dT%H:%M:%SZ"


def iso(epoch):
    """UTC ISO-8601 text for an epoch (what the lease stores)."""
    return time.strftime(_ISO, time.gmtime(epoch))


def epoch(text):
    """Epoch seconds of a lease timestamp, or None when absent or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text, _ISO)))
    except ValueError:
        return None


def new_lease(run_id, now, owner=None, acquired_at=None):
    """The lease document written for ``run_id`` (``acquired_at`` kept on refresh)."""
    return {
        "run_id": run_id,
        "owner": owner or "unknown",
        "acquired_at": acquired_at or iso(now),
        "refreshed_at": iso(now),
    }


def parse_lease(text):
    """A lease from file content; unreadable content becomes a lease held by UNREADABLE."""
    try:
        lease = json.loads(text)
    except ValueError:
        lease = None
    if not isinstance(lease, dict) or not isinstance(lease.get("run_id"), str):
        return {"run_id": UNREADABLE, "owner": "unknown", "unreadable": True}
    return lease


def describe(lease, now):
    """(text, age_seconds) describing the holder, e.g. for the refusal message."""
    seen = epoch(lease.get("refreshed_at")) or epoch(lease.get("acquired_at"))
    age = None if seen is None else max(0, int(now - seen))
    since = lease.get("acquired_at") or "an unknown time"
    last = "never refreshed" if age is None else f"last seen {age} s ago"
    note = "; the lease file is not valid JSON" if lease.get("unreadable") else ""
    return f"owner {lease.get('owner') or 'unknown'}, since {since}, {last}{note}", age


def decide(existing, run_id, now, stale_after, break_run_id=None, state="acquired", path=None):
    """What to do with the lease: ``(action, message)``.

    ``existing`` is the current lease (dict) or None when there is no file. Actions:
    ``create``/``refresh``/``break`` (acquired), ``remove``/``noop`` (released),
    ``ours``/``free`` (checked), and ``fail_held``/``fail_stale`` whenever another run holds
    it. A stale lease fails like a fresh one, only worded differently: taking it over would
    hide a run that may still be writing.
    """
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"run_id must be a non-empty string, got {run_id!r}")
    where = path or "the run lock"

    if existing is None:
        if state == "acquired":
            return CREATE, f"Stage 2 run lock {where} acquired for run {run_id}"
        if state == "released":
            return NOOP, f"Stage 2 run lock {where} is not held; nothing to release"
        return FREE, f"Stage 2 run lock {where} is free"

    holder = existing.get("run_id")
    if holder == run_id:
        if state == "acquired":
            return REFRESH, f"Stage 2 run lock {where} already held by this run {run_id}; refreshed"
        if state == "released":
            return REMOVE, f"Stage 2 run lock {where} released by run {run_id}"
        return OURS, f"Stage 2 run lock {where} is held by this run {run_id}"

    text, age = describe(existing, now)
    if break_run_id and break_run_id == holder:
        if state == "acquired":
            return BREAK, (
                f"Stage 2 run lock {where}: broke the lease of run {holder} ({text}) as asked, "
                f"and acquired it for run {run_id}"
            )
        if state == "released":
            return REMOVE, f"Stage 2 run lock {where}: removed the lease of run {holder} as asked"
    if state == "released":
        # Never remove another run's lease on the way out: report it and leave it.
        return NOOP, (
            f"Stage 2 run lock {where} is held by run {holder} ({text}), not by {run_id}; "
            "left in place"
        )
    stale = age is None or age > stale_after
    message = f"Stage 2 run lock {where} is held by run {holder} ({text}). "
    if stale:
        message += (
            f"It looks stale (no refresh for more than {stale_after} s), but it is never "
            "taken over silently: make sure that run is dead, then rerun with "
            f"-e birth_stage2_break_lock={holder}"
        )
        return FAIL_STALE, message
    message += (
        "Another run is in progress; wait for it, or if it died, rerun with "
        f"-e birth_stage2_break_lock={holder}"
    )
    return FAIL_HELD, message
