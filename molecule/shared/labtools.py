"""Helpers for the molecule scenarios' testinfra checks: the project's own commands, run the
way an operator runs them, and SQL through the VPS's docker exec."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[2]))
VENV_BIN = PROJECT / ".venv" / "bin"
CONTAINER = "birth-lab-pg"
FINGERPRINT_SQL = (PROJECT / "molecule" / "shared" / "fingerprint.sql").read_text()


def shq(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def sql(host, query: str, db: str = "birth_lab") -> str:
    """SQL on the VPS exactly as the playbooks pipe it: docker exec -i ... psql."""
    psql = f"docker exec -i {CONTAINER} psql -X -q -A -t -v ON_ERROR_STOP=1 -d {db}"
    cmd = host.run(f"printf '%s' {shq(query)} | {psql}")
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def fingerprint(host) -> str:
    return sql(host, FINGERPRINT_SQL)


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    e["PATH"] = f"{VENV_BIN}:{e.get('PATH', '')}"
    e["ANSIBLE_FORCE_COLOR"] = "0"
    return e


def playbook(*args: str, **popen) -> subprocess.CompletedProcess:
    """ansible-playbook from the repo root, with the project's ansible.cfg and lab inventory."""
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), *args],
        cwd=PROJECT,
        env=env(),
        text=True,
        capture_output=True,
        timeout=900,
        **popen,
    )


def start_playbook(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "ansible-playbook"), *args],
        cwd=PROJECT,
        env=env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
