"""How the apply steers its batches: the birth_stage2_apply_* values checked before anything
runs (tasks/apply.yml; unit-tested).

The input is ``__birth_stage2_steer`` (roles/birth_stage2/vars/main.yml): each setting the
apply session SETs as ``birth_stage2.<name>`` for the procedure to read. Every problem is
listed, each naming its variable and what it must be, so one run shows them all.

No Ansible import: the unit tests load this file as plain Python.
"""

from __future__ import annotations

import re

# PostgreSQL interval input the procedure casts (a number and a unit): 500ms, 30s, 10min, 1h.
_DURATION = re.compile(r"^[0-9]+(\.[0-9]+)?\s*(ms|s|min|h)$")
_COUNT = re.compile(r"^-?[0-9]+$")
_QUERY_START = re.compile(r"^\s*(select|with|values|table)\b", re.IGNORECASE)
QUERY_MAX = 2000

# name -> (kind, lowest value); kind: count, duration (optional), query (optional).
SETTINGS = {
    "batch_target_ms": ("count", 0),
    "batch_min": ("count", 1),
    "batch_max": ("count", 1),
    "batch_lock_timeout": ("duration", None),
    "batch_retries": ("count", 0),
    "batch_backoff_ms": ("count", 0),
    "throttle_wait_ms": ("count", 10),
    "max_lag": ("duration", None),
    "critical_lag": ("duration", None),
    "max_lock_waiters": ("count", -1),
    "critical_lock_waiters": ("count", -1),
    "max_xact_age": ("duration", None),
    "critical_xact_age": ("duration", None),
    "throttle_query": ("query", None),
    "critical_query": ("query", None),
}
# A duration that must be set (the others may be empty: off).
REQUIRED = {"batch_lock_timeout"}


def _var(name):
    return f"birth_stage2_apply_{name}"


def query_problem(text):
    """Why ``text`` cannot be the operator's throttle or critical query, or None."""
    if len(text) > QUERY_MAX:
        return f"is {len(text)} characters, over {QUERY_MAX}"
    if not _QUERY_START.match(text):
        return "must be one read-only query starting with SELECT, WITH, VALUES or TABLE"
    body = text.rstrip().rstrip(";")
    if ";" in body:
        return "must be one statement (no ; inside it)"
    if "\\" in body:
        return "may not hold a backslash (psql meta-commands are refused)"
    if any(ord(c) < 32 and c not in "\t\n" for c in body):
        return "may not hold control characters"
    return None


def problems(steer):
    """Every problem of the steering settings, as text naming the variable."""
    if not isinstance(steer, dict):
        raise ValueError(f"the steering settings must be a mapping, got {steer!r}")
    out = []
    values = {}
    for name, (kind, lowest) in SETTINGS.items():
        raw = "" if steer.get(name) is None else str(steer.get(name)).strip()
        if kind == "query":
            why = query_problem(raw) if raw else None
            if why:
                out.append(f"{_var(name)} {why}")
            continue
        if kind == "duration":
            if not raw and name not in REQUIRED:
                continue
            if not _DURATION.match(raw):
                out.append(
                    f"{_var(name)} must be a duration such as 500ms, 30s, 10min or 1h"
                    f"{'' if name in REQUIRED else ' (empty: off)'} (got {raw!r})"
                )
            continue
        if not _COUNT.match(raw):
            out.append(f"{_var(name)} must be an integer (got {raw!r})")
            continue
        values[name] = int(raw)
        if values[name] < lowest:
            out.append(f"{_var(name)} must be at least {lowest} (got {values[name]})")
    if values.get("batch_min", 1) > values.get("batch_max", values.get("batch_min", 1)):
        out.append(
            f"{_var('batch_min')} ({values['batch_min']}) must not be over "
            f"{_var('batch_max')} ({values['batch_max']})"
        )
    unknown = sorted(set(steer) - set(SETTINGS))
    if unknown:
        out.append(f"unknown steering setting(s): {', '.join(unknown)}")
    return out


# Counts that -1 turns off: the session gets an empty setting, which the procedure reads as off.
OFF_AT_MINUS_ONE = {"max_lock_waiters", "critical_lock_waiters"}


def session_sets(steer):
    """The checked settings as (name, text) pairs, in a stable order, for SET birth_stage2.*."""
    out = []
    for name in SETTINGS:
        text = "" if steer.get(name) is None else str(steer.get(name)).strip()
        if name in OFF_AT_MINUS_ONE and text == "-1":
            text = ""
        out.append((name, text))
    return out


class FilterModule:
    def filters(self):
        return {
            "birth_stage2_steer_problems": problems,
            "birth_stage2_steer_sets": session_sets,
        }
