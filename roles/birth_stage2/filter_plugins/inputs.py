"""Preflight's input check: every variable that reaches SQL, a psql line or a file name.

Plain Python with unit tests (tests/unit/test_inputs.py). Each variable is matched against an
allow-list pattern for its kind and refused by name when it does not match, so a value with
a newline, a quote or a backslash never reaches a template, where it could end a comment,
break a literal or start a psql meta-command. Identifiers are the one kind that may hold
quotes and spaces (the live system may have such names): they are always quoted with
``pg_ident``, so only control characters and over-long names are refused.

No Ansible import: errors are ValueError (Ansible reports them as the filter's error), so
the unit tests load this file as plain Python.
"""

from __future__ import annotations

import json
import re

MAX_IDENT_BYTES = 63


def _word(chars, longest, shown):
    """A kind made of a letter or digit and then up to ``longest - 1`` of ``chars``."""
    pattern = re.compile(rf"[A-Za-z0-9][A-Za-z0-9{chars}]{{0,{longest - 1}}}")
    return pattern, f"{shown} (starting with a letter or digit)"


# kind -> (pattern, what a valid value looks like)
KINDS = {
    "identifier": (None, "a name of 1 to 63 bytes without control characters"),
    "code": _word("._:+-", 63, "1 to 63 of A-Z a-z 0-9 . _ : + -"),
    "container": _word("_.-", 128, "a container name: A-Z a-z 0-9 _ . -"),
    "run_id": _word("._-", 64, "1 to 64 of A-Z a-z 0-9 . _ -"),
    "date": (re.compile(r"\d{4}-\d{2}-\d{2}"), "a date YYYY-MM-DD"),
    "path": (
        # Unambiguous (segments each end in '/'), so a failing match cannot backtrack
        # exponentially: a nested "(x+/?)*" did, on a long value with a newline.
        re.compile(r"/(?:[A-Za-z0-9._+@-]+/)*[A-Za-z0-9._+@-]*"),
        "an absolute path of A-Z a-z 0-9 . _ + @ - and /, without '..'",
    ),
    "duration": (
        re.compile(r"\d+(\.\d+)?\s*(us|ms|s|min|h|d)?"),
        "a duration such as 30min, 10s, 250ms or 0",
    ),
    "principal": _word("._@+-", 64, "1 to 64 of A-Z a-z 0-9 . _ @ + -"),
}


def problem(kind, value):
    """Why ``value`` is not a valid ``kind``, or None."""
    if kind not in KINDS:
        raise ValueError(f"unknown input kind {kind!r}")
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if value == "":
        return "is empty"
    pattern, want = KINDS[kind]
    if kind == "identifier":
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            return f"holds a control character (newline, NUL ...); want {want}"
        if len(value.encode("utf-8")) > MAX_IDENT_BYTES:
            return f"is longer than PostgreSQL's {MAX_IDENT_BYTES} bytes"
        return None
    if not pattern.fullmatch(value):
        return f"want {want}"
    if kind == "path" and ".." in value.split("/"):
        return f"has a '..' component; want {want}"
    return None


def bad_inputs(checks):
    """Refusals for ``checks``, a list of ``{name, kind, value}`` (or ``values`` for a list).

    Returns a list of ``"NAME=VALUE (why)"`` strings, VALUE shown as JSON so that an
    invisible newline or quote is visible; empty when every input is fine.
    """
    out = []
    for check in checks:
        name, kind = check["name"], check["kind"]
        if check.get("optional") and check.get("value") in (None, ""):
            continue
        if check.get("missing"):
            out.append(f"{name} (missing: an override replaces the whole map, give every key)")
            continue
        values = check["values"] if "values" in check else [check.get("value")]
        if not isinstance(values, list):
            out.append(f"{name}={json.dumps(values, default=str)} (must be a list)")
            continue
        for index, value in enumerate(values):
            why = problem(kind, value)
            if why:
                label = f"{name}[{index}]" if "values" in check else name
                out.append(f"{label}={json.dumps(value, default=str)} ({why})")
    return out


def name_checks(prefix, mapping, required_keys=(), code_suffix="_code"):
    """Checks for every key of a name map, plus a refusal for each missing key.

    Keys ending in ``code_suffix`` hold codes (written as literals), the others identifiers.
    """
    out = []
    if not isinstance(mapping, dict):
        return [{"name": prefix, "kind": "identifier", "value": mapping}]
    for key in required_keys:
        if key not in mapping:
            out.append({"name": f"{prefix}.{key}", "kind": "identifier", "missing": True})
    for key, value in mapping.items():
        kind = "code" if key.endswith(code_suffix) else "identifier"
        out.append({"name": f"{prefix}.{key}", "kind": kind, "value": value})
    return out


# The entry points' own inputs (apply_control, review, permit): each problem names its
# variable, what it must be and what it got (as JSON), so one run lists them all.
_REASON = re.compile(r"[A-Za-z0-9 .,:;_()/+@-]{0,200}")
_OPERATOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTROL = re.compile(r"pause|resume|abort")
_VERDICT = re.compile(r"approved|rejected")
_PERMIT = re.compile(r"open|revoke")
_EXPIRES = re.compile(r"[1-9][0-9]*\s*(s|m|min|h|d)")


def _bad(name, value, pattern, must):
    """The problem of ``name`` unless ``value`` is a string ``pattern`` matches whole."""
    if isinstance(value, str) and pattern.fullmatch(value):
        return []
    return [f"{name} must be {must} (got {json.dumps(value)})"]


def control_problems(action, reason, operator):
    """playbooks/apply_control.yml: the action, its reason and who sets it."""
    out = _bad("birth_stage2_apply_control", action, _CONTROL, "pause, resume or abort")
    out += _bad("birth_stage2_apply_control_reason", reason, _REASON,
                "up to 200 of A-Z a-z 0-9 space . , : ; _ ( ) / + @ -")  # fmt: skip
    out += _bad("birth_stage2_operator", operator, _OPERATOR, "1 to 64 of A-Z a-z 0-9 . _ @ + -")
    return out


def review_problems(verdict, evidence, run):
    """playbooks/review.yml: the verdict, the evidence sha256 reviewed and its dry-run."""
    out = _bad("birth_stage2_review_verdict", verdict, _VERDICT, "approved or rejected")
    out += _bad("birth_stage2_review_evidence", evidence, _SHA256,
                "the 64-hex-digit evidence sha256 of the dry-run reviewed")  # fmt: skip
    out += _bad("birth_stage2_review_run", run, _RUN, "the run id of the dry-run reviewed")
    return out


def permit_problems(action, evidence, expires_in):
    """playbooks/permit.yml: open (with the evidence and the expiry) or revoke."""
    if action != "open":
        return _bad("birth_stage2_permit_action", action, _PERMIT, "open or revoke")
    out = _bad("birth_stage2_permit_evidence", evidence, _SHA256,
               "the 64-hex-digit evidence sha256 of the reviewed dry-run")  # fmt: skip
    if not _EXPIRES.fullmatch(str(expires_in)):
        out.append(
            "birth_stage2_permit_expires_in must be a number and s, m, min, h or d, like 2h"
            f" (got {json.dumps(expires_in)})"
        )
    return out


class FilterModule:
    def filters(self):
        return {
            "birth_stage2_bad_inputs": bad_inputs,
            "birth_stage2_name_checks": name_checks,
            "birth_stage2_control_problems": control_problems,
            "birth_stage2_review_input_problems": review_problems,
            "birth_stage2_permit_input_problems": permit_problems,
        }
