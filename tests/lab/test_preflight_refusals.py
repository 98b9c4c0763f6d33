"""Preflight refuses a VPS that is not ready, and each refusal names the command that fixes
it: the staging root (missing, someone else's, writable by others), the docker client
(missing, its engine unreachable), the container (missing, stopped) and the database
(missing). Nothing starts: no lease is taken, births stay as they were. For the staging
root, the command the message gives is run and the dry-run then goes through.

Each case has its own staging root next to the lab's (/opt/incomex/docs/mcp-writes-<db>-*),
so the tests run beside other users of the lab; BIRTH_LAB_DB=<db> points them at that lab
database.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import LAB_DB, REPO, lab_env, lab_playbook
from tests.lab.test_failures import births, expect
from tests.test_runbook import squash

BASE = f"/opt/incomex/docs/mcp-writes-{LAB_DB}"
FIX = re.compile(r"(ansible (?:-i \S+ )?\S+ (?:-b )?-m ansible\.builtin\.\w+ -a '[^']*')")


def play(root: str, *args: str) -> tuple[int, str]:
    proc = lab_playbook(
        "stage2.yml",
        "--tags",
        "dryrun",
        "-e",
        f"birth_stage2_db_name={LAB_DB}",
        "-e",
        f"birth_stage2_staging_root={root}",
        *args,
        check=False,
    )
    return proc.returncode, squash(proc.stdout + proc.stderr).replace("''", "'")


def refused(root: str, *args: str) -> str:
    before = births()
    rc, out = play(root, *args)
    assert rc != 0, out[-3000:]
    expect("vps-not-ready", out)
    assert births() == before
    assert not Path(root, ".birth-stage2.lock").exists(), "a refused run took the lease"
    return out


def run_fix(out: str) -> None:
    """The command the refusal names, as the operator would paste it."""
    command = FIX.search(out).group(1)
    env = lab_env()
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env['PATH']}"
    proc = subprocess.run(
        shlex.split(command), cwd=REPO, env=env, text=True, capture_output=True, timeout=300
    )
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"


@pytest.fixture
def root():
    path = f"{BASE}-preflight-{uuid.uuid4().hex[:6]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def good_root(root):
    os.mkdir(root, 0o750)
    return root


def test_missing_staging_root_is_created_by_the_command_it_names(root):
    out = refused(root)
    assert f"the staging root {root} does not exist on the VPS; create it: ansible" in out
    run_fix(out)
    assert oct(Path(root).stat().st_mode & 0o777) == "0o750"
    rc, out = play(root)
    assert rc == 0, out[-3000:]


def test_staging_root_of_someone_else_is_given_back_by_its_fix(good_root):
    shutil.chown(good_root, user="nobody")
    out = refused(good_root)
    assert "is owned by nobody, not by the SSH user root" in out
    run_fix(out)
    rc, out = play(good_root)
    assert rc == 0, out[-3000:]


def test_staging_root_others_may_write_is_restricted_by_its_fix(good_root):
    os.chmod(good_root, 0o777)  # noqa: S103 - the refusal under test
    out = refused(good_root)
    assert "has mode 0777: group or others may write there" in out
    run_fix(out)
    rc, out = play(good_root)
    assert rc == 0, out[-3000:]


def test_docker_client_missing(good_root):
    out = refused(good_root, "-e", "birth_stage2_docker_bin=/nonexistent/docker")
    assert "-e birth_stage2_docker_bin=PATH" in out


def test_docker_engine_not_reachable(good_root, tmp_path):
    # The real docker client, pointed at an engine that is not there.
    client = tmp_path / "docker-engine-down"
    client.write_text(f'#!/bin/sh\nDOCKER_HOST=unix://{tmp_path}/no-engine.sock exec docker "$@"\n')
    client.chmod(0o755)
    out = refused(good_root, "-e", f"birth_stage2_docker_bin={client}")
    assert "docker is not reachable on the VPS (Cannot connect to the Docker daemon" in out
    assert "-m ansible.builtin.service -a 'name=docker state=started'" in out


def test_container_missing(good_root):
    out = refused(good_root, "-e", "birth_stage2_container=birth-lab-no-such-container")
    assert "-e birth_stage2_container=NAME" in out


def test_container_stopped(good_root):
    name = f"birth-lab-stopped-{uuid.uuid4().hex[:6]}"
    image = subprocess.run(
        ["docker", "inspect", "--format", "{{.Config.Image}}", "birth-lab-pg"],
        env=lab_env(),
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    subprocess.run(
        ["docker", "create", "--name", name, image], env=lab_env(), capture_output=True, check=True
    )
    try:
        out = refused(good_root, "-e", f"birth_stage2_container={name}")
        assert f"container {name} is not running (status" in out
        assert f"-m ansible.builtin.command -a 'docker start {name}'" in out
    finally:
        subprocess.run(["docker", "rm", "-f", name], env=lab_env(), capture_output=True)


def test_database_missing(good_root):
    out = refused(good_root, "-e", "birth_stage2_db_name=birth_lab_no_such_db")
    assert "database birth_lab_no_such_db does not exist in container" in out
    assert "-e birth_stage2_db_name=NAME" in out
