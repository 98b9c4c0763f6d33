"""The Stage 2 run lease on the VPS host, as plain functions.

The advisory lock of ``birth_stage2_psql`` covers one psql session; a Stage 2 run is many
sessions with Ansible between them. The lease (a small JSON file on the host) covers the
whole run: one run holds it from preflight to report, and any other run is refused with a
message naming the holder. A lease that looks abandoned is never taken over silently: the
operator breaks it by naming its run id (``break_run_id``).

``decide`` and ``fence`` are pure (no I/O, ``now`` passed in) so every case is a row in a
unit test; the modules only read the file, call them and carry out the action. The file I/O
(atomic create, replace, remove) is here too, shared by ``birth_run_lock`` (which takes and
releases the lease) and ``birth_sql`` (which checks it before every script and keeps it
fresh while the script runs: the fence).

Each lease carries a fencing ``token``: an integer strictly greater than every token issued
before on that lease path (a counter file next to the lease, ``<lease>.token``), and never
below the current time in milliseconds, so a lease taken on another path later still gets a
greater one. ``birth_sql`` hands it to every write session, which records it in the
database and is refused there once a greater token has been seen: a run whose lease was
broken stops at its next write even if the lease file says otherwise.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import json
import os
import tempfile
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


def new_lease(run_id, now, owner=None, acquired_at=None, token=None):
    """The lease document written for ``run_id`` (``acquired_at`` and ``token`` kept on refresh)."""
    lease = {
        "run_id": run_id,
        "owner": owner or "unknown",
        "acquired_at": acquired_at or iso(now),
        "refreshed_at": iso(now),
    }
    if token is not None:
        lease["token"] = token
    return lease


# --------------------------------------------------------------------------- fencing token


def valid_token(value):
    """``value`` when it is a positive integer token (a bool is not), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def lease_token(lease):
    """The fencing token a lease carries, or None (no lease, none written, or not an integer)."""
    return valid_token(lease.get("token")) if isinstance(lease, dict) else None


def token_path(path):
    """The counter file of the lease at ``path``: the last token issued on it."""
    return f"{path}.token"


def next_token(previous, now):
    """The token after ``previous``: max(previous + 1, ``now`` in milliseconds).

    Strictly increasing on one lease path whatever the clock does, and (with a sane clock)
    greater than any token issued earlier on another path.
    """
    millis = int(now * 1000)
    previous = valid_token(previous)
    return millis if previous is None else max(previous + 1, millis)


def parse_token(text):
    """The token in a counter file's content, or None when it is not a positive integer."""
    text = (text or "").strip()
    if not text.isdigit():
        return None
    return valid_token(int(text))


def read_token(path):
    """The last token issued on the lease at ``path`` (its counter file), or None."""
    try:
        with open(token_path(path), encoding="utf-8") as handle:
            return parse_token(handle.read())
    except FileNotFoundError:
        return None


def issue_token(path, now, floor=None):
    """A new token for the lease at ``path``, recorded in its counter file (atomically).

    ``floor`` is a token known to be issued already (the lease being broken carries one):
    the new token is greater than it too, should the counter file have been lost.
    """
    previous = max((t for t in (read_token(path), valid_token(floor)) if t), default=None)
    token = next_token(previous, now)
    counter = token_path(path)
    fd, tmp = tempfile.mkstemp(prefix=".birth_stage2_token.", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"{token}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, counter)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return token


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
    if lease.get("hold"):
        note += f"; held on purpose: {lease['hold']}"
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
            if existing.get("hold"):
                # A step's outcome is unknown: the lease stays until someone has read the
                # state back and breaks it by name.
                return NOOP, (
                    f"Stage 2 run lock {where} kept for run {run_id}: {existing['hold']}. "
                    "Read the state back (ansible-playbook stage2.yml --tags dryrun -e "
                    f"birth_stage2_break_lock={run_id}), which also frees it"
                )
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


def fence(existing, run_id, path=None):
    """None when ``run_id`` still holds the lease, else why this run must stop now.

    A run whose lease was broken (another run took it) or released must not write again:
    ``birth_sql`` checks this before every script and while a long one runs.
    """
    where = path or "the run lock"
    if existing is None:
        return (
            f"the run lease {where} is gone (released or broken): run {run_id} no longer "
            "holds it, so it stops here"
        )
    holder = existing.get("run_id")
    if holder == run_id:
        return None
    text, _age = describe(existing, time.time())
    return (
        f"the run lease {where} now belongs to run {holder} ({text}), not to this run "
        f"{run_id}: it was broken, so this run stops here"
    )


def heartbeat(existing, now, hold=None):
    """The lease with ``refreshed_at`` moved to ``now`` (and ``hold`` set when given)."""
    lease = dict(existing)
    lease["refreshed_at"] = iso(now)
    if hold:
        lease["hold"] = hold
    return lease


def read_lease(path):
    """The current lease, or None when there is no file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_lease(handle.read())
    except FileNotFoundError:
        return None


def _temp_with(path, lease):
    """A temporary file next to ``path`` holding ``lease``, flushed to disk."""
    fd, tmp = tempfile.mkstemp(prefix=".birth_stage2_lease.", dir=os.path.dirname(path) or ".")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(lease, handle, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    return tmp


def create_lease(path, lease):
    """Create ``path`` only if absent, complete from its first instant; False if it exists."""
    tmp = _temp_with(path, lease)
    try:
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                raise
        # No hard links on this filesystem: exclusive create (a crash can leave it empty,
        # which reads back as an UNREADABLE lease, never as a free one).
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(lease, handle, sort_keys=True)
            handle.write("\n")
        return True
    finally:
        os.unlink(tmp)


def replace_lease(path, lease):
    """Replace ``path`` atomically with ``lease``."""
    os.replace(_temp_with(path, lease), path)


def remove_lease(path):
    """Remove ``path``; already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
