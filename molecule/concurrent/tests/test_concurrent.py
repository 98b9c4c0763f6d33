"""Two Stage 2 runs at once: the second is refused within seconds, naming the lock."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from labtools import CONTAINER, PROJECT, playbook, sql, start_playbook

LEASE = "/opt/incomex/docs/mcp-writes/.birth-stage2.lock"


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_a_second_run_is_refused_while_the_first_holds_the_run_lock(host):
    first = start_playbook("stage2.yml")
    try:
        assert wait_for(lambda: host.file(LEASE).exists), "the first run never took the lock"
        t0 = time.monotonic()
        second = playbook("stage2.yml", "--tags", "dryrun")
        elapsed = time.monotonic() - t0
        assert second.returncode != 0
        assert "is held by run" in second.stdout
        assert "birth_stage2_break_lock=" in second.stdout
        assert elapsed < 30, f"refusal took {elapsed:.1f} s"
    finally:
        out, _ = first.communicate(timeout=900)
    assert first.returncode == 0, out[-3000:]
    assert not host.file(LEASE).exists
    assert sql(host, "SELECT count(*) FROM birth_registry") == "1210868"


def _advisory_key(name: str) -> int:
    path = PROJECT / "module_utils" / "birth_stage2_psql.py"
    spec = importlib.util.spec_from_file_location("birth_stage2_psql", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.advisory_key(name)


def test_a_session_holding_the_advisory_lock_blocks_a_run_and_is_named(host):
    """Another tool (or a run from another controller) holds the database lock."""
    key = _advisory_key("birth_stage2")
    holder = subprocess.Popen(
        ["ssh", "-p", "2222", "-i", str(PROJECT / ".lab/ssh/id_ed25519"),
         "-o", f"UserKnownHostsFile={PROJECT / '.lab/ssh/known_hosts'}",
         "-o", "StrictHostKeyChecking=yes", "root@127.0.0.1",
         f"docker exec -i {CONTAINER} psql -X -q -d birth_lab -c "
         f"\"SET application_name = 'other_tool'; SELECT pg_advisory_lock({key}); "
         "SELECT pg_sleep(40)\""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        held = (  # the key is an integer computed above, not input
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            f"AND objid = ({int(key)} & 4294967295)::bigint::oid"
        )
        assert wait_for(lambda: sql(host, held) == "1", timeout=20)
        t0 = time.monotonic()
        proc = playbook("stage2.yml", "--tags", "dryrun")
        elapsed = time.monotonic() - t0
        assert proc.returncode != 0
        assert "other_tool" in proc.stdout
        assert "another Stage 2 run is in progress" in proc.stdout
        assert elapsed < 30, f"refusal took {elapsed:.1f} s"
    finally:
        holder.terminate()
        holder.wait(timeout=30)
        sql(host, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE application_name = 'other_tool'")  # fmt: skip
