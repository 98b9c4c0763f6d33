"""The SSH link to the VPS dies in the middle of a run: nothing is half-applied, and the
runbook's next commands (read back, breaking the dead run's lease; then rerun) end in the
same state as an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.conftest import REPO, lab_env, lab_playbook, run_psql
from tests.lab.labrun import ssh_relay

LEASE = Path("/opt/incomex/docs/mcp-writes/.birth-stage2.lock")
CLASSIFIED = (
    "SELECT count(*) FROM collection_registry "
    "WHERE birth_code_source = 'inferred_from_existing_trigger'"
)


def count(sql: str) -> int:
    return int(run_psql(sql).stdout.strip())


def test_a_run_that_loses_ssh_mid_way_is_finished_by_the_runbooks_commands():
    env = lab_env()
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env['PATH']}"
    # The run reaches the VPS through a relay of its own: killing it cuts this run's link
    # while the VPS stays up for any other run on the lab.
    relay, through_relay = ssh_relay()
    run = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "ansible-playbook"), "stage2.yml", *through_relay],
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
        relay.kill()  # the VPS drops off the network, for this run
        out, _ = run.communicate(timeout=300)
    finally:
        relay.kill()
        if run.poll() is None:
            run.kill()
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
