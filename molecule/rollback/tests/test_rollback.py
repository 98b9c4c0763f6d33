"""Rollback after a full run gives back the pristine fingerprint; it refuses after an apply."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from labtools import fingerprint, playbook, sql

EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))


@pytest.fixture(scope="module")
def before():
    return (EPHEMERAL / "fingerprint_before").read_text().strip()


def test_the_full_run_changed_the_fingerprint(host, before):
    assert fingerprint(host) != before


def test_rollback_restores_the_fingerprint(host, before):
    proc = playbook("stage2.yml", "--tags", "rollback")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert fingerprint(host) == before
    assert sql(host, "SELECT count(*) FROM birth_registry") == "1210868"


def test_a_second_rollback_changes_nothing(host, before):
    proc = playbook("stage2.yml", "--tags", "rollback")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "changed=0" in proc.stdout
    assert fingerprint(host) == before


def test_rollback_refuses_once_a_row_is_past_planned(host):
    assert playbook("stage2.yml").returncode == 0
    sql(
        host,
        "UPDATE birth_backfill_ledger SET status = 'done' "
        "WHERE plan_code = 'QT-001' AND collection_name = 'apr_approvals'",
    )
    after_run = fingerprint(host)
    proc = playbook("stage2.yml", "--tags", "rollback")
    assert proc.returncode != 0
    assert "rollback refused" in proc.stdout
    assert "apr_approvals" in proc.stdout
    assert fingerprint(host) == after_run  # the refused rollback changed nothing
