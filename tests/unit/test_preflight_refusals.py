"""Preflight's refusals about the VPS: each names what is wrong and the command that fixes it."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_runbook import check_adhoc, check_command

ROLE = Path(__file__).parents[2] / "roles" / "birth_stage2"
SPEC = importlib.util.spec_from_file_location("preflight", ROLE / "filter_plugins" / "preflight.py")
pf = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(pf)

ROOT = "/opt/incomex/docs/mcp-writes"
GOOD_ROOT = {"exists": True, "is_dir": True, "owner": "root", "mode": "0750", "writable": True}
RUNNING = {"found": True, "rc": 0, "state": {"Running": True, "Status": "running"}}


def problems(root=None, docker=None, user="root", inventory="", lab=False):
    probe = {"user": user, "root": GOOD_ROOT | (root or {}), "docker": docker or RUNNING}
    return pf.vps_problems(probe, ROOT, "pg", "docker", "vps1", inventory, lab)


def test_a_ready_vps_has_no_problem():
    assert problems() == []


CREATE = (
    f"ansible vps1 -m ansible.builtin.file -a 'path={ROOT} state=directory owner=root mode=0750'"
)


@pytest.mark.parametrize(
    ("root", "says"),
    [
        ({"exists": False}, "does not exist on the VPS; create it: "),
        ({"is_dir": False}, "is not a directory"),
        ({"owner": "nobody"}, "is owned by nobody, not by the SSH user root"),
        ({"mode": "0777"}, "has mode 0777: group or others may write there"),
        ({"mode": "0770"}, "has mode 0770"),
        ({"writable": False}, "is not writable by the SSH user root"),
    ],
)
def test_staging_root_refusals_give_the_command_that_creates_it(root, says):
    (problem,) = problems(root=root)
    assert says in problem
    assert problem.endswith(CREATE)


def test_an_ssh_user_other_than_root_owns_it_and_the_fix_becomes_root():
    assert problems(user="deploy", root={"owner": "deploy"}) == []
    (problem,) = problems(user="deploy", root={"owner": "nobody"})
    assert "ansible vps1 -b -m ansible.builtin.file" in problem
    assert "owner=deploy" in problem


def test_a_production_inventory_is_named_in_the_fix():
    (problem,) = problems(root={"exists": False}, inventory="inventories/production")
    assert "ansible -i inventories/production vps1 -m" in problem


@pytest.mark.parametrize(
    ("docker", "says", "fix"),
    [
        (
            {"found": False, "err": "[Errno 2] No such file or directory"},
            "the docker client docker cannot be run on the VPS",
            "ansible-playbook stage2.yml --tags dryrun -e birth_stage2_docker_bin=PATH",
        ),
        (
            {"found": True, "rc": 1, "err": 'no container with name or ID "pg" found'},
            "container pg does not exist on the VPS",
            "ansible-playbook stage2.yml --tags dryrun -e birth_stage2_container=NAME",
        ),
        (
            {"found": True, "rc": 1, "err": "Error: No such object: pg"},
            "container pg does not exist on the VPS",
            "-e birth_stage2_container=NAME",
        ),
        (
            {"found": True, "rc": 1, "err": "Cannot connect to the Docker daemon at unix:///x"},
            "docker is not reachable on the VPS (Cannot connect to the Docker daemon",
            "ansible vps1 -m ansible.builtin.service -a 'name=docker state=started'",
        ),
        (
            {"found": True, "rc": None, "err": "docker inspect did not answer in 30 s"},
            "docker is not reachable on the VPS (docker inspect did not answer",
            "state=started",
        ),
        (
            {"found": True, "rc": 0, "state": {"Running": False, "Status": "exited"}},
            "container pg is not running (status exited)",
            "ansible vps1 -m ansible.builtin.command -a 'docker start pg'",
        ),
    ],
)
def test_docker_refusals_give_their_fix(docker, says, fix):
    (problem,) = problems(docker=docker)
    assert says in problem
    assert fix in problem


def test_on_the_lab_the_fix_also_names_the_lab_playbook():
    (problem,) = problems(docker={"found": True, "rc": 0, "state": {"Running": False}}, lab=True)
    assert problem.endswith("(on the lab: ansible-playbook playbooks/lab.yml)")


def test_a_missing_database_gets_its_fix_and_other_errors_stay_as_they_are():
    error = 'inline sql: psql: error: ... FATAL:  database "nope" does not exist'
    out = pf.with_fix(error, "vps1", "nope", "pg")
    assert out.startswith("Preflight on vps1: database nope does not exist in container pg;")
    assert "ansible-playbook stage2.yml --tags dryrun -e birth_stage2_db_name=NAME" in out
    assert out.endswith(f"({error})")
    other = "another Stage 2 run is in progress"
    assert pf.with_fix(other, "vps1", "x", "pg") == other


@pytest.mark.parametrize(
    ("sources", "arg"),
    [
        (["/repo/inventories/lab"], ""),
        (["/repo/inventories/lab/"], ""),
        (["/repo/inventories/production"], "inventories/production"),
        (["/elsewhere/hosts.yml"], "/elsewhere/hosts.yml"),
        ([], ""),
    ],
)
def test_inventory_arg(sources, arg):
    assert pf.inventory_arg(sources, "/repo") == arg


def test_the_probe_reports_what_the_filter_reads(tmp_path):
    """files/vps_probe.py, run the way preflight runs it (python3 -c), on this machine."""
    root = tmp_path / "root"
    root.mkdir(mode=0o750)
    root.chmod(0o750)
    script = (ROLE / "files" / "vps_probe.py").read_text()
    argv = [sys.executable, "-c", script, str(root), str(tmp_path / "no-docker"), "pg"]
    seen = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    assert seen["root"] == {
        "exists": True,
        "is_dir": True,
        "owner": seen["user"],
        "mode": "0750",
        "writable": True,
    }
    assert seen["docker"]["found"] is False
    (problem,) = pf.vps_problems(seen, str(root), "pg", "docker", "vps1")
    assert "cannot be run on the VPS" in problem


def test_every_fix_command_names_what_exists():
    """The commands the refusals give are real: playbooks, tags and variables that exist, and
    ad-hoc commands with a builtin module that exists."""
    cases = [
        ({"exists": False}, RUNNING, "root"),
        ({"owner": "nobody"}, RUNNING, "deploy"),
        ({}, {"found": False}, "root"),
        ({}, {"found": True, "rc": 1, "err": "No such container: pg"}, "root"),
        ({}, {"found": True, "rc": 1, "err": "Cannot connect to the Docker daemon"}, "root"),
        ({}, {"found": True, "rc": 0, "state": {"Running": False}}, "root"),
    ]
    messages = [
        pf.vps_problems(
            {"user": user, "root": GOOD_ROOT | root, "docker": docker},
            ROOT, "pg", "docker", "vps1", "inventories/production", True,
        )[0]
        for root, docker, user in cases
    ]  # fmt: skip
    messages.append(pf.with_fix('database "x" does not exist', "vps1", "x", "pg", "", True))
    seen = 0
    for message in messages:
        for command in re.findall(r"ansible (?:-i \S+ )?\S+ (?:-b )?-m \S+ -a '[^']*'", message):
            assert check_adhoc(command) == [], command
            seen += 1
        for command in re.findall(r"ansible-playbook [^()]*?(?= \(|\. \(|\)|$)", message):
            assert check_command(command) == [], command
            seen += 1
    assert seen >= len(messages) + 3  # each refusal, and the lab's own commands


# ---- the live state: earlier guards, frozen tools, an open apply --------------------------------


def test_a_clean_state_has_no_refusal():
    state = {"dependency_guards": [{"view": "v", "check": "c", "ok": True}],
             "frozen_tools": {"dot-x": "frozen"}, "open_ledger_runs": []}  # fmt: skip
    assert pf.state_problems(state, ["all"]) == []


def test_every_refusal_of_the_live_state_is_listed():
    state = {
        "dependency_guards": [{"view": "v_s0", "check": "gw", "ok": False, "detail": None}],
        "frozen_tools": {"dot-a": "frozen", "dot-b": "active"},
        "open_ledger_runs": [{"collection": "a"}, {"collection": "b"}],
    }
    assert pf.state_problems(state, ["dryrun"]) == [
        "earlier guard red: v_s0.gw (); fix that stage first",
        "DOT tool dot-b is active, must stay frozen; ask the owner",
        "an apply is open (ledger rows applying: a, b); finish it: ansible-playbook stage2.yml"
        " --tags apply -e birth_stage2_apply_confirm=RUN_ID",
    ]
    # The apply itself finishes an open apply.
    assert len(pf.state_problems(state, ["apply"])) == 2
