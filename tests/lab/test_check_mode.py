"""`ansible-playbook stage2.yml --check` on the pristine lab rehearses every step and writes
nothing: not to the database (catalogue and touched tables fingerprinted), not to the VPS."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import REPO, lab_playbook, run_psql

FINGERPRINT = (REPO / "molecule" / "shared" / "fingerprint.sql").read_text()
STAGING_ROOT = Path("/opt/incomex/docs/mcp-writes")
RUN_ID = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-check"


def test_check_mode_rehearses_everything_and_writes_nothing():
    before = run_psql(FINGERPRINT).stdout.strip()
    proc = lab_playbook("stage2.yml", "--check", "-e", f"birth_stage2_run_id={RUN_ID}")
    assert run_psql(FINGERPRINT).stdout.strip() == before
    # Nothing staged on the VPS, no run lease left behind.
    assert not list(STAGING_ROOT.glob("birth-stage2-*"))
    assert not (STAGING_ROOT / ".birth-stage2.lock").exists()
    # It did rehearse: the classification and the plan report what they would change.
    recap = re.search(r"lab-vps\s*:\s*ok=\d+\s+changed=(\d+)", proc.stdout)
    assert recap and int(recap.group(1)) > 0
    summary = json.loads((REPO / "reports" / RUN_ID / "summary.json").read_text())
    assert summary["mode"] == "check"
    assert summary["births"]["before"] == summary["births"]["after"]
    assert summary["dryrun"]["total_delta"] == 137
