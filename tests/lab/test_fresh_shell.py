"""The mission's commands work as typed, after the README's set-up, in a new login shell.

A new user logs in (ssh, su -) and types the README's commands from the repo root. The shell
here is what such a login gets: an empty environment (`env -i`) and bash as a login shell
(`bash -l`), which reads /etc/profile and /etc/profile.d/, where bin/setup puts the
project's tools on the PATH. Nothing of the test's own environment (the venv, DOCKER_HOST)
leaks in.

BIRTH_LAB_DB=<db> points the dry-run and the refused gates at that lab database and its own
staging root, as tests/lab/test_failures.py does.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import LAB_DB, REPO

PROFILE = Path("/etc/profile.d/birth-stage2.sh")
HOME = os.path.expanduser("~")
ISOLATED = LAB_DB != "birth_lab"
STAGING_ROOT = f"/opt/incomex/docs/mcp-writes-{LAB_DB}" if ISOLATED else None
LAB_ARGS = (
    f" -e birth_stage2_db_name={LAB_DB} -e birth_stage2_staging_root={STAGING_ROOT}"
    if ISOLATED
    else ""
)


def login_shell(command: str) -> subprocess.CompletedProcess:
    """`command`, typed in a new login shell at the repo root (output with stderr)."""
    script = f"cd {shlex.quote(str(REPO))} && {command}"
    return subprocess.run(
        ["env", "-i", f"HOME={HOME}", "TERM=dumb", "LANG=C.UTF-8", "bash", "-lc", script],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=600,
    )


def typed(command: str) -> subprocess.CompletedProcess:
    """A README command as typed, against this test's lab database."""
    proc = login_shell(command + LAB_ARGS)
    assert "command not found" not in proc.stdout, proc.stdout[-2000:]
    return proc


def test_setup_put_the_tools_on_the_login_path():
    assert PROFILE.is_file(), f"{PROFILE} is missing: bin/setup writes it (run bin/setup)"
    proc = login_shell("command -v ansible-playbook ansible molecule")
    assert proc.returncode == 0, proc.stdout
    venv_bin = (REPO / ".venv" / "bin").resolve()
    assert [Path(p).parent for p in proc.stdout.split()] == [venv_bin] * 3, proc.stdout


def test_the_dry_run_as_typed():
    proc = typed("ansible-playbook stage2.yml --tags dryrun")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert re.search(r"\d+ expected (new )?births", proc.stdout), proc.stdout[-3000:]


def test_molecule_as_typed_finds_its_scenarios():
    # `molecule test` itself drives the lab (tests/test_molecule.py runs every scenario);
    # here: the command resolves in a login shell and reads the project's scenarios.
    proc = login_shell("molecule list")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "default" in proc.stdout


def test_the_gated_apply_commands_run_as_typed():
    """review, permit and apply resolve and run their playbooks; here each one refuses
    (no such evidence, no such action, no review), so nothing is written."""
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    commands = [
        "ansible-playbook playbooks/review.yml -e birth_stage2_reviewer=t2-newcomer"
        " -e birth_stage2_review_verdict=approved -e birth_stage2_review_evidence="
        + "0" * 64
        + f" -e birth_stage2_review_run={run_id}",
        "ansible-playbook playbooks/permit.yml -e birth_stage2_permit_action=maybe"
        " -e birth_stage2_permit_issuer=owner -e birth_stage2_permit_expires_in=2h",
        f"ansible-playbook stage2.yml --tags apply -e birth_stage2_apply_confirm={run_id}",
    ]
    for command in commands:
        proc = typed(command)
        assert "PLAY RECAP" in proc.stdout, f"{command}:\n{proc.stdout[-3000:]}"
        assert proc.returncode != 0, f"{command} was expected to refuse:\n{proc.stdout[-3000:]}"
