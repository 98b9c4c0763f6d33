"""After the leaking classification: the play failed and nothing was committed."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from labtools import sql


def test_no_birth_leaked(host):
    assert sql(host, "SELECT count(*) FROM birth_registry") == "1210868"
    assert (
        sql(host, "SELECT count(*) FROM birth_registry WHERE entity_code LIKE '%::reclassified'")
        == "0"
    )


def test_nothing_classified(host):
    assert (
        sql(
            host,
            "SELECT count(*) FROM collection_registry "
            "WHERE birth_code_source = 'inferred_from_existing_trigger'",
        )
        == "0"
    )
    assert (
        sql(host, "SELECT count(*) FROM collection_registry WHERE birth_code_kind IS NOT NULL")
        == "31"
    )


def test_later_phases_never_ran(host):
    assert sql(host, "SELECT count(*) FROM birth_backfill_ledger WHERE plan_code = 'QT-001'") == "0"
    assert sql(host, "SELECT count(*) FROM pg_class WHERE relname LIKE 'v_birth_%'") == "0"


def test_the_run_lock_was_released(host):
    assert not host.file("/opt/incomex/docs/mcp-writes/.birth-stage2.lock").exists
