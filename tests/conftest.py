"""Shared test plumbing: reach the lab's database the way the playbooks do.

`lab_sql` runs SQL through `docker exec -i <container> psql` (the real docker client against
the lab's engine). BIRTH_LAB_PSQL overrides the command prefix (shell-split), e.g. to point
the figure tests at another server while developing a fixture.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAB_DIR = REPO / ".lab"
LAB_CONTAINER = os.environ.get("BIRTH_LAB_CONTAINER", "birth-lab-pg")
LAB_DB = os.environ.get("BIRTH_LAB_DB", "birth_lab")


def lab_env() -> dict[str, str]:
    """The environment in which `docker` reaches the lab's engine."""
    env = dict(os.environ)
    sock = LAB_DIR / "podman.sock"
    if "DOCKER_HOST" not in env and sock.exists():
        env["DOCKER_HOST"] = f"unix://{sock}"
    env["CONTAINERS_CONF"] = str(LAB_DIR / "containers.conf")
    return env


def psql_prefix(db: str = LAB_DB) -> list[str]:
    override = os.environ.get("BIRTH_LAB_PSQL")
    if override:
        return shlex.split(override)
    return ["docker", "exec", "-i", LAB_CONTAINER, "psql", "-U", "postgres", "-d", db]


def run_psql(sql: str, db: str = LAB_DB, check: bool = True) -> subprocess.CompletedProcess:
    """Pipe SQL into psql in the lab container, as the report's operator did."""
    argv = [*psql_prefix(db), "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1"]
    proc = subprocess.run(
        argv, input=sql, text=True, capture_output=True, env=lab_env(), timeout=600
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"psql failed (rc={proc.returncode}): {proc.stderr.strip()}")
    return proc


def _rows(stdout: str) -> list[tuple[str, ...]]:
    return [tuple(line.split("\t")) for line in stdout.splitlines() if line != ""]


@pytest.fixture(scope="session")
def lab_sql():
    """lab_sql(sql) -> rows as tuples of strings; raises when psql fails."""

    def _run(sql: str) -> list[tuple[str, ...]]:
        return _rows(run_psql(sql).stdout)

    return _run


def lab_playbook(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ansible-playbook from the repo root with the project's venv."""
    venv_bin = REPO / ".venv" / "bin"
    env = lab_env()
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '')}"
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    proc = subprocess.run(
        [str(venv_bin / "ansible-playbook"), *args],
        cwd=REPO,
        text=True,
        capture_output=True,
        env=env,
        timeout=1800,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"ansible-playbook {' '.join(args)} failed (rc={proc.returncode}):\n"
            f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture
def pristine_lab():
    """Put the lab database back to the pristine fixture before the test."""
    lab_playbook("playbooks/lab.yml", "-e", "lab_action=reset")
