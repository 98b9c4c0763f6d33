"""The SSH link to the VPS dies in the middle of a run: nothing is half-applied, and the
runbook's next commands (read back, breaking the dead run's lease; then rerun) end in the
same state as an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import LAB_DIR, REPO, lab_env, lab_playbook, run_psql

LEASE = Path("/opt/incomex/docs/mcp-writes/.birth-stage2.lock")
CLASSIFIED = (
    "SELECT count(*) FROM collection_registry "
    "WHERE birth_code_source = 'inferred_from_existing_trigger'"
)


def count(sql: str) -> int:
    return int(run_psql(sql).stdout.strip())


def stop_the_vps_sshd() -> None:
    """The VPS drops off the network: its sshd and every session it serves die."""
    pid = int((LAB_DIR / "sshd.pid").read_text())
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    os.kill(pid, signal.SIGTERM)
    for child in children.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)


def test_a_run_that_loses_ssh_mid_way_is_finished_by_the_runbooks_commands():
    env = lab_env()
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env['PATH']}"
    run = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "ansible-playbook"), "stage2.yml"],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while count(CLASSIFIED) == 0:  # the classification has committed: the run is mid-way
            assert run.poll() is None, "the run ended before it classified"
            assert time.monotonic() < deadline, "the run never classified"
            time.sleep(0.2)
        stop_the_vps_sshd()
        out, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
        lab_playbook("playbooks/lab.yml")  # the VPS is back
    assert run.returncode != 0
    assert "UNREACHABLE!" in out
    # Nothing half-applied: what committed is whole (the classification), births untouched.
    assert count("SELECT count(*) FROM birth_registry") == 1210868
    assert count(CLASSIFIED) == 39

    # The runbook: read the state back, breaking the dead run's lease (the refusal names it;
    # here it is read from the lease itself) ...
    run_id = json.loads(LEASE.read_text())["run_id"]
    back = lab_playbook("stage2.yml", "--tags", "dryrun", "-e", f"birth_stage2_break_lock={run_id}")
    assert "137 expected new births" in back.stdout
    # ... then rerun the whole stage, which picks up where the database stands.
    lab_playbook("stage2.yml")
    assert count(CLASSIFIED) == 39
    assert count("SELECT count(*) FROM birth_backfill_ledger WHERE status = 'planned'") == 5
    assert count("SELECT count(*) FROM birth_registry") == 1210868
