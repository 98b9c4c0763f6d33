"""docs/RUNBOOK.md says what the code does: every failure message it quotes is one the code
emits, and every command it gives names a playbook, tags and variables that exist.

Conventions the runbook follows (and this test reads): failures are the `###` sections under
`## Failures`; a line starting `You see` quotes stable fragments of a message in backticks
(`You see (Ansible)`: the fragment is Ansible's or Jinja's own, searched in their installed
sources); every backticked span starting with `ansible-playbook` or `bin/stage2` is a
command. No database is needed.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
RUNBOOK = REPO / "docs" / "RUNBOOK.md"
CODE_DIRS = ("roles", "library", "module_utils", "playbooks")
CODE_SUFFIXES = {".yml", ".yaml", ".j2", ".py", ".sql"}
ROLE = REPO / "roles" / "birth_stage2"

# The failures the on-call brief asks the runbook to cover (section slugs).
REQUIRED_SECTIONS = {
    "guard-red",
    "birth-leak",
    "no-go-collection",
    "lock-held",
    "ssh-lost-mid-step",
    "apply-interrupted",
    "review-missing-or-stale",
    "permit-missing-or-expired",
    "rollback-refused",
    "missing-object",
    "missing-variable",
    "bad-name",
}
COMMAND_START = ("ansible-playbook ", "bin/stage2")


def squash(text: str) -> str:
    """Whitespace runs to one space (YAML folds long messages; Ansible wraps its output)."""
    return re.sub(r"\s+", " ", text)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_text() -> str:
    return RUNBOOK.read_text(encoding="utf-8")


def headings(text: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"(?m)^(#{1,6}) (.+)$", text)]


def failure_sections(text: str | None = None) -> dict[str, str]:
    """slug -> body of each `###` section under `## Failures`."""
    text = text if text is not None else runbook_text()
    part = text.split("\n## Failures", 1)[1]
    part = re.split(r"(?m)^## ", part, maxsplit=1)[0]
    out = {}
    for block in re.split(r"(?m)^### ", part)[1:]:
        title, _, body = block.partition("\n")
        out[slug(title)] = body
    return out


def section_fragments(section: str) -> list[tuple[str, str]]:
    """(kind, fragment) quoted on the section's `You see` lines; kind 'ansible' or 'code'."""
    body = failure_sections()[section]
    out = []
    for line in body.splitlines():
        if not line.startswith("You see"):
            continue
        kind = "ansible" if line.startswith("You see (Ansible)") else "code"
        out += [(kind, frag) for frag in re.findall(r"`([^`]+)`", line)]
    return out


def commands(text: str) -> list[str]:
    return [s for s in re.findall(r"`([^`]+)`", text) if s.startswith(COMMAND_START)]


def adhoc_commands(text: str) -> list[str]:
    """Ad-hoc `ansible HOST -m MODULE -a ARGS` commands (the fixes run on the VPS)."""
    return [s for s in re.findall(r"`([^`]+)`", text) if s.startswith("ansible ")]


def check_adhoc(command: str) -> list[str]:
    """Problems with one ad-hoc command: it names a host and a builtin module that exists."""
    argv = shlex.split(command)
    problems, module, hosts = [], None, []
    i = 1
    while i < len(argv):
        arg = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in ("-m", "--module-name"):
            module = value
            i += 2
        elif arg in ("-a", "--args"):
            i += 2
        elif arg in ("-i", "--inventory"):
            if not (REPO / value).exists():
                problems.append(f"inventory {value} does not exist")
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            hosts.append(arg)
            i += 1
    if len(hosts) != 1:
        problems.append(f"names {len(hosts)} host patterns, not one")
    modules = Path(importlib.util.find_spec("ansible").origin).parent / "modules"
    if not module or not module.startswith("ansible.builtin."):
        problems.append(f"module {module!r} is not an ansible.builtin module")
    elif not (modules / f"{module.rsplit('.', 1)[1]}.py").is_file():
        problems.append(f"module {module} does not exist")
    return problems


@functools.cache
def code_corpus() -> str:
    parts = []
    for top in CODE_DIRS:
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts:
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
    return squash("\n".join(parts))


@functools.cache
def ansible_corpus() -> str:
    parts = []
    for package in ("ansible", "jinja2"):
        root = Path(importlib.util.find_spec(package).origin).parent
        parts += [p.read_text(encoding="utf-8", errors="replace") for p in root.rglob("*.py")]
    return squash("\n".join(parts))


def _collect_tags(node, out: set[str]) -> None:
    if isinstance(node, dict):
        tags = node.get("tags")
        if isinstance(tags, str):
            out.add(tags)
        elif isinstance(tags, list):
            out.update(str(t) for t in tags)
        for value in node.values():
            _collect_tags(value, out)
    elif isinstance(node, list):
        for value in node:
            _collect_tags(value, out)


@functools.cache
def role_tags() -> frozenset[str]:
    """The tags of the role's phases (tasks/main.yml), without Ansible's own special tags."""
    tags: set[str] = set()
    _collect_tags(yaml.safe_load((ROLE / "tasks" / "main.yml").read_text()), tags)
    return frozenset(tags - {"always", "never"})


@functools.cache
def known_variables() -> frozenset[str]:
    """Variables with a default (this role, the lab role) or read by the roles and playbooks."""
    names: set[str] = set()
    for defaults in (
        ROLE / "defaults" / "main.yml",
        REPO / "roles" / "lab" / "defaults" / "main.yml",
    ):
        names.update((yaml.safe_load(defaults.read_text()) or {}).keys())
    words = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", code_corpus()))
    # Read but not defaulted (birth_stage2_run_id, birth_stage2_declared_births ...): any
    # public name the code mentions.
    names.update(w for w in words if w.startswith(("birth_stage2_", "lab_")))
    return frozenset(names)


def extra_var_names(value: str) -> list[str]:
    """Variable names of one -e value: key=value pairs, or a YAML/JSON mapping."""
    text = value.strip()
    if text.startswith("@"):
        return []
    if text.startswith("{"):
        return list(yaml.safe_load(text).keys())
    return [pair.split("=", 1)[0] for pair in shlex.split(text)]


def check_command(command: str) -> list[str]:
    """Problems with one runbook command (empty when it names only what exists)."""
    argv = shlex.split(command)
    problems = []
    if argv[0] == "bin/stage2":
        if not (REPO / "bin" / "stage2").is_file():
            problems.append("bin/stage2 does not exist")
        playbook = "stage2.yml"
        rest = argv[1:]
    else:
        playbook, rest = None, argv[1:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        value = rest[i + 1] if i + 1 < len(rest) else ""
        if arg in ("--tags", "-t", "--skip-tags"):
            for tag in value.split(","):
                if tag not in role_tags():
                    problems.append(
                        f"tag {tag!r} is not a tag of roles/birth_stage2/tasks/main.yml"
                    )
            i += 2
        elif arg in ("-e", "--extra-vars"):
            for name in extra_var_names(value):
                if name not in known_variables():
                    problems.append(f"variable {name!r} exists nowhere")
            i += 2
        elif arg in ("-i", "--inventory"):
            if not (REPO / value).exists():
                problems.append(f"inventory {value} does not exist")
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            if playbook is None and arg.endswith((".yml", ".yaml")):
                playbook = arg
            else:
                problems.append(f"unexpected argument {arg!r}")
            i += 1
    if playbook is None:
        problems.append("names no playbook")
    elif not (REPO / playbook).is_file():
        problems.append(f"playbook {playbook} does not exist")
    return problems


# --------------------------------------------------------------------------- tests


def test_every_failure_of_the_brief_has_a_section():
    assert set(failure_sections()) >= REQUIRED_SECTIONS


@pytest.mark.parametrize("section", sorted(failure_sections()))
def test_each_failure_quotes_a_message_and_gives_a_next_command(section):
    body = failure_sections()[section]
    assert section_fragments(section), f"{section}: no `You see` line quoting the message"
    assert "Next:" in body and commands(body), f"{section}: no next command"


FRAGMENTS = sorted({(k, f) for s in failure_sections() for k, f in section_fragments(s)})


@pytest.mark.parametrize(("kind", "fragment"), FRAGMENTS, ids=[f for _, f in FRAGMENTS])
def test_quoted_message_is_one_the_code_emits(kind, fragment):
    corpus = ansible_corpus() if kind == "ansible" else code_corpus()
    where = "Ansible's or Jinja's sources" if kind == "ansible" else ", ".join(CODE_DIRS)
    assert squash(fragment) in corpus, f"{fragment!r} occurs nowhere in {where}"


@pytest.mark.parametrize("command", sorted(set(commands(runbook_text()))))
def test_command_names_what_exists(command):
    assert check_command(command) == []


def test_command_checker_catches_what_does_not_exist():
    assert check_command("ansible-playbook stage2.yml --tags dryrun") == []
    assert check_command("ansible-playbook stage2.yml --tags dryrn")
    assert check_command("ansible-playbook playbooks/nope.yml")
    assert check_command("ansible-playbook stage2.yml -e birth_stage2_no_such_var=1")
    assert check_command("bin/stage2 --tags apply -e birth_stage2_apply_confirm=RUN_ID") == []


@pytest.mark.parametrize("command", sorted(set(adhoc_commands(runbook_text()))))
def test_adhoc_command_names_a_module_that_exists(command):
    assert check_adhoc(command) == []


def test_adhoc_checker_catches_what_does_not_exist():
    ok = "ansible HOST -m ansible.builtin.file -a 'path=ROOT state=directory'"
    assert check_adhoc(ok) == []
    assert check_adhoc("ansible HOST -m ansible.builtin.nope -a x")
    assert check_adhoc("ansible HOST -m file -a x")
    assert check_adhoc("ansible -m ansible.builtin.file -a x")
    assert check_adhoc("ansible -i inventories/nope HOST -m ansible.builtin.file")


def test_every_runbook_link_the_code_gives_exists():
    """Messages point at docs/RUNBOOK.md#anchor; each anchor is a heading of the runbook."""
    anchors = {slug(h) for h in headings(runbook_text())}
    linked = set(re.findall(r"RUNBOOK\.md#([a-z0-9-]+)", code_corpus()))
    assert linked, "the code links no runbook section"
    assert linked <= anchors, f"sections missing from the runbook: {sorted(linked - anchors)}"


def test_runbook_internal_links_resolve():
    text = runbook_text()
    anchors = {slug(h) for h in headings(text)}
    links = set(re.findall(r"\]\(#([a-z0-9-]+)\)", text))
    assert links <= anchors, sorted(links - anchors)


def test_every_phase_has_a_row_in_the_phase_table():
    table = runbook_text().split("## Phases", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1) for m in re.finditer(r"(?m)^\| `([a-z_]+)` \|", table)}
    assert role_tags() <= rows, sorted(role_tags() - rows)


def test_runbook_has_no_fenced_code():
    assert not re.search(r"(?m)^\s*(```|~~~)", runbook_text())
