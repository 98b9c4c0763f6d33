"""Preflight's refusals about the VPS itself, as plain functions: the staging root, the docker
client, the container and the database, each refusal with the command that fixes it.

`vps_problems` reads what the VPS probe (tasks/preflight.yml, one read-only round trip)
saw; `with_fix` adds the fix to a failure of the first SQL session (a database that does
not exist). Unit-tested in tests/unit/test_preflight_refusals.py without Ansible or a VPS.
"""

from __future__ import annotations

import re
import shlex

# Group or others may write: anyone in them could change the SQL Stage 2 pipes into psql.
SHARED_WRITE = 0o022
ROOT_MODE = "0750"
LAB_UP = "ansible-playbook playbooks/lab.yml"
MISSING_CONTAINER = re.compile(r"no such (container|object)|no container with name or id", re.I)
MISSING_DATABASE = re.compile(r'database "([^"]+)" does not exist')


class Target:
    """Where the fixes run: the inventory host, its SSH user, the -i the run used, the lab."""

    def __init__(self, host, user="", inventory="", lab=False):
        self.host = host
        self.user = user or "root"
        self.inventory = inventory
        self.lab = lab

    def adhoc(self, module, args, become=False):
        inventory = f"-i {shlex.quote(self.inventory)} " if self.inventory else ""
        b = "-b " if become and self.user != "root" else ""
        return f"ansible {inventory}{self.host} {b}-m {module} -a {shlex.quote(args)}"

    def rerun(self, variable):
        inventory = f" -i {shlex.quote(self.inventory)}" if self.inventory else ""
        return f"ansible-playbook stage2.yml{inventory} --tags dryrun -e {variable}"

    def lab_hint(self, command=LAB_UP):
        return f" (on the lab: {command})" if self.lab else ""


def staging_root_problems(root, seen, target):
    """The staging root exists, is a directory of the SSH user's (or root's), is writable by
    that user and by nobody else."""
    create = target.adhoc(
        "ansible.builtin.file",
        f"path={root} state=directory owner={target.user} mode={ROOT_MODE}",
        become=True,
    )
    where = f"Preflight on {target.host}: the staging root {root}"
    if not seen.get("exists"):
        return [f"{where} does not exist on the VPS; create it: {create}"]
    if not seen.get("is_dir"):
        return [f"{where} is not a directory; move it away, then create it: {create}"]
    problems = []
    owner = seen.get("owner")
    if owner not in (target.user, "root"):
        problems.append(
            f"{where} is owned by {owner}, not by the SSH user {target.user} (or root); "
            f"give it to {target.user}: {create}"
        )
    mode = int(seen.get("mode", "0"), 8)
    if mode & SHARED_WRITE:
        problems.append(
            f"{where} has mode {seen.get('mode')}: group or others may write there and change "
            f"the SQL Stage 2 runs; restrict it: {create}"
        )
    if not seen.get("writable"):
        problems.append(f"{where} is not writable by the SSH user {target.user}; fix it: {create}")
    return problems


def docker_problems(container, docker_bin, seen, target):
    """The docker client runs, reaches its engine, and the container exists and runs."""
    first = (seen.get("err") or seen.get("out") or "").strip().splitlines()[:1]
    detail = first[0] if first else f"exit {seen.get('rc')}"
    where = f"Preflight on {target.host}:"
    if not seen.get("found"):
        return [
            f"{where} the docker client {docker_bin} cannot be run on the VPS ({detail}); "
            "install it there, or name it with birth_stage2_docker_bin: "
            + target.rerun("birth_stage2_docker_bin=PATH")
        ]
    if seen.get("rc") != 0 and MISSING_CONTAINER.search(detail):
        return [
            f"{where} container {container} does not exist on the VPS; name the database's "
            "container with birth_stage2_container: "
            + target.rerun("birth_stage2_container=NAME")
            + target.lab_hint()
        ]
    if seen.get("rc") != 0:
        return [
            f"{where} docker is not reachable on the VPS ({detail}); start its engine: "
            + target.adhoc("ansible.builtin.service", "name=docker state=started", become=True)
            + target.lab_hint()
        ]
    state = seen.get("state") or {}
    if not state.get("Running"):
        return [
            f"{where} container {container} is not running (status "
            f"{state.get('Status', 'unknown')}); start it: "
            + target.adhoc("ansible.builtin.command", f"{docker_bin} start {container}")
            + target.lab_hint()
        ]
    return []


def vps_problems(probe, root, container, docker_bin, host, inventory="", lab=False):
    """Every refusal about the VPS the probe saw (empty when Stage 2 may start)."""
    target = Target(host, probe.get("user"), inventory, lab)
    return staging_root_problems(root, probe.get("root") or {}, target) + docker_problems(
        container, docker_bin, probe.get("docker") or {}, target
    )


def with_fix(message, host, db_name, container, inventory="", lab=False):
    """A failure of the first SQL session, with the fix when preflight knows it."""
    found = MISSING_DATABASE.search(message or "")
    if not found:
        return message
    target = Target(host, "", inventory, lab)
    return (
        f"Preflight on {host}: database {found.group(1)} does not exist in container "
        f"{container}; name the live database with birth_stage2_db_name: "
        + target.rerun("birth_stage2_db_name=NAME")
        + target.lab_hint(f"{LAB_UP} -e lab_db_name={db_name}")
        + f". ({message})"
    )


def inventory_arg(sources, repo, default="inventories/lab"):
    """The -i a fix command needs: the run's (first) inventory relative to the repo, none
    for the default one."""
    if not sources:
        return ""
    text = str(sources[0]).rstrip("/")
    prefix = str(repo).rstrip("/") + "/"
    text = text[len(prefix) :] if text.startswith(prefix) else text
    return "" if text == default else text


def state_problems(state, run_tags):
    """Preflight's refusals about the live state (sql/probe/preflight.sql.j2's JSON): an
    earlier stage's guard red, a frozen DOT tool thawed, an apply left open (refused unless
    this run is the apply, which finishes it)."""
    out = [
        f"earlier guard red: {g['view']}.{g['check']} ({g.get('detail') or ''});"
        " fix that stage first"
        for g in state.get("dependency_guards") or []
        if not g.get("ok")
    ]
    out += [
        f"DOT tool {tool} is {status}, must stay frozen; ask the owner"
        for tool, status in (state.get("frozen_tools") or {}).items()
        if status != "frozen"
    ]
    open_runs = state.get("open_ledger_runs") or []
    if open_runs and "apply" not in run_tags:
        names = ", ".join(r["collection"] for r in open_runs)
        fix = "finish it: ansible-playbook stage2.yml --tags apply -e birth_stage2_apply_confirm=RUN_ID"  # noqa: E501 (one string: the RUNBOOK quotes it)
        out.append(f"an apply is open (ledger rows applying: {names}); {fix}")
    return out


class FilterModule:
    def filters(self):
        return {
            "birth_stage2_vps_problems": vps_problems,
            "birth_stage2_with_fix": with_fix,
            "birth_stage2_inventory_arg": inventory_arg,
            "birth_stage2_state_problems": state_problems,
        }
