"""Many hosts in one play: run ids that name the host, per-host latest links, one line per host."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "hosts", Path(__file__).parents[2] / "roles" / "birth_stage2" / "filter_plugins" / "hosts.py"
)
hs = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(hs)
STAMP = "20261202T101500123456Z"


@pytest.mark.parametrize(
    ("given", "host", "play_hosts", "run_id"),
    [
        ("", "vps1", ["vps1"], f"{STAMP}-vps1"),
        (None, "vps1", ["vps1", "vps2"], f"{STAMP}-vps1"),
        ("R1", "vps1", ["vps1"], "R1"),
        ("R1", "vps1", ["vps1", "vps2"], "R1-vps1"),
        ("R1-vps1", "vps1", ["vps1", "vps2"], "R1-vps1"),
        ("", "db/prod 1", ["db/prod 1"], f"{STAMP}-db_prod_1"),
    ],
)
def test_run_id(given, host, play_hosts, run_id):
    assert hs.run_id(given, STAMP, host, play_hosts) == run_id


def test_two_hosts_given_one_id_get_two_directories():
    hosts = ["staging", "production"]
    assert len({hs.run_id("R1", STAMP, h, hosts) for h in hosts}) == 2


def test_latest_link():
    assert hs.latest_link("lab-vps") == "latest-lab-vps"
    assert hs.latest_link("a/b") == "latest-a_b"


def test_one_line_per_host_in_inventory_order():
    facts = {
        "a": {
            "__birth_stage2_record": {"run_id": "R-a"},
            "__birth_stage2_summary": {
                "run_id": "R-a",
                "births": {"before": 10, "after": 10},
                "decision": {"status": "NOT_READY"},
            },
            "__birth_stage2_finished": True,
        },
        "b": {
            "__birth_stage2_record": {"run_id": "R-b"},
            "__birth_stage2_summary": {"run_id": "R-b"},
            "__birth_stage2_failure": {
                "phase": "classify",
                "runbook": "docs/RUNBOOK.md#birth-leak",
            },
        },
        "c": {"__birth_stage2_record": {"run_id": "R-c"}},
        "d": {},
    }
    assert hs.host_lines(["a", "b", "c", "d"], facts, "/r") == [
        "a: run R-a FINISHED; births 10 -> 10; decision NOT_READY; /r/R-a/summary.json",
        "b: run R-b FAILED in classify (docs/RUNBOOK.md#birth-leak); checkpoint "
        "/r/R-b/00_checkpoint.md",
        "c: run R-c STOPPED (unreachable, or stopped with the play); its checkpoint is written "
        "at the end of the play: /r/R-c/00_checkpoint.md",
        "d: did not start (refused before the run was named)",
    ]
