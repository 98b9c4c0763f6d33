"""Many hosts in one play, as plain functions: each host's run id (so its report directory
names it), its `reports/latest-<host>` link, and the one line per host that ends the
summary table.

Used by tasks/preflight.yml, failed.yml, summary.yml and release.yml; unit-tested in
tests/unit/test_hosts.py without Ansible.
"""

from __future__ import annotations

import re


def host_label(host):
    """The host's inventory name as it may stand in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(host)) or "_"


def run_id(given, stamp, host, play_hosts):
    """The run's id on this host: a generated one is the start time and the host; one given
    with -e birth_stage2_run_id is kept as it is for a single host (bin/stage2 and the tests
    name their run's folder) and gets the host appended when the play has several, so no
    two hosts share a report directory."""
    label = host_label(host)
    if not given:
        return f"{stamp}-{label}"
    given = str(given)
    if len(play_hosts or []) > 1 and not given.endswith(f"-{label}"):
        return f"{given}-{label}"
    return given


def latest_link(host):
    return f"latest-{host_label(host)}"


def host_line(host, facts, reports_dir):
    """One line on a host's run: its id, how it ended, and where its record is."""
    facts = facts or {}
    summary = facts.get("__birth_stage2_summary") or {}
    failure = facts.get("__birth_stage2_failure")
    record = facts.get("__birth_stage2_record") or {}
    run = summary.get("run_id") or record.get("run_id")
    if not run:
        return f"{host}: did not start (refused before the run was named)"
    where = f"{reports_dir}/{run}/"
    if failure:
        return (
            f"{host}: run {run} FAILED in {failure.get('phase')} "
            f"({failure.get('runbook')}); checkpoint {where}00_checkpoint.md"
        )
    if facts.get("__birth_stage2_finished"):
        births = summary.get("births") or {}
        decision = (summary.get("decision") or {}).get("status")
        return (
            f"{host}: run {run} FINISHED; births {births.get('before')} -> {births.get('after')}"
            + (f"; decision {decision}" if decision else "")
            + f"; {where}summary.json"
        )
    return (
        f"{host}: run {run} STOPPED (unreachable, or stopped with the play); its checkpoint "
        f"is written at the end of the play: {where}00_checkpoint.md"
    )


def host_lines(hosts, facts_by_host, reports_dir):
    """One line per host of the play, in inventory order."""
    return [host_line(h, (facts_by_host or {}).get(h), reports_dir) for h in hosts or []]


class FilterModule:
    def filters(self):
        return {
            "birth_stage2_run_id": run_id,
            "birth_stage2_latest_link": latest_link,
            "birth_stage2_host_lines": host_lines,
        }
