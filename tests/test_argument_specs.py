"""The role's argument spec and its defaults agree on every name and every static value, and
every entry point (main and each tasks_from of playbooks/) has a spec declaring exactly the
variables it reads.

What an entry point reads is found by following its task file: the Jinja expressions of
its tasks, the task files it imports, the templates it renders (and those they import), the
vars/main.yml entries it uses and the templated defaults of the public variables it reads.
"""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import jinja2
import pytest
import yaml
from jinja2 import meta

REPO = Path(__file__).resolve().parent.parent
ROLES = REPO / "roles"
ROLE = ROLES / "birth_stage2"
SPECS = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())

PUBLIC = re.compile(r"birth_stage2_\w+")
PRIVATE = re.compile(r"__birth_stage2_\w+")
# Keys whose string is a bare Jinja expression, without {{ }}.
BARE_KEYS = {"when", "that", "changed_when", "failed_when", "until"}
IMPORTS = {
    f"{ns}{key}" for ns in ("", "ansible.builtin.") for key in ("import_tasks", "include_tasks")
}
TEMPLATE_NAME = re.compile(r"""['"](\w[\w./-]*\.j2)['"]""")


class _AnyName(dict):
    """Every filter and test exists: the scan reads variable names, it renders nothing."""

    def __contains__(self, name):
        return True

    def __missing__(self, name):
        return _nothing

    def get(self, name, default=None):
        return super().get(name, _nothing)


def _nothing(*args, **kwargs):
    return None


JINJA = jinja2.Environment(extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"])  # noqa: S701
JINJA.filters = _AnyName(JINJA.filters)
JINJA.tests = _AnyName(JINJA.tests)


def _jinja_reads(text: str) -> tuple[set[str], set[str]]:
    """The variables a Jinja text reads, and the templates it names."""
    with warnings.catch_warnings():
        # A regex in a task's Jinja string ('\s') is an invalid Python escape to the lexer.
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = JINJA.parse(text)
    templates = set(TEMPLATE_NAME.findall(text))
    templates |= {t for t in meta.find_referenced_templates(tree) if t}
    return set(meta.find_undeclared_variables(tree)), templates


def _strings(node, key=None):
    """Every string of a YAML document, with the key it stands under."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node


def _yaml_reads(data) -> tuple[set[str], set[str], set[str]]:
    """The variables, templates and task files a YAML document reads."""
    names: set[str] = set()
    templates: set[str] = set()
    task_files: set[str] = set()
    for key, text in _strings(data):
        if key in IMPORTS and "{" not in text:
            task_files.add(text)
        # src: a template task's; template: a view's in __birth_stage2_view_plan (the step
        # templates include each by that name).
        if key in ("src", "template") and text.endswith(".j2") and "{" not in text:
            templates.add(text)
        if key in BARE_KEYS:
            text = "{{ " + text + " }}"
        if "{{" in text or "{%" in text:
            n, t = _jinja_reads(text)
            names |= n
            templates |= t
    return names, templates, task_files


def _staged_templates() -> set[str]:
    """The templates of every staged file (vars/main.yml builds that list with Jinja)."""
    listing = JINJA.from_string(VARS["__birth_stage2_staged_files"]).render(**VARS)
    return {f["src"] for f in ast.literal_eval(listing.strip())}


def reads(entry_point: str) -> set[str]:
    """The public variables an entry point reads."""
    names: set[str] = set()
    todo_files, seen_files = {f"{entry_point}.yml"}, set()
    todo_templates: set[str] = set()
    while todo_files:
        name = todo_files.pop()
        seen_files.add(name)
        n, t, f = _yaml_reads(yaml.safe_load((ROLE / "tasks" / name).read_text()))
        names |= n
        todo_templates |= t
        todo_files |= f - seen_files
    seen_names: set[str] = set()
    seen_templates: set[str] = set()
    todo_names = names
    while todo_names or todo_templates:
        if todo_templates:
            template = todo_templates.pop()
            seen_templates.add(template)
            n, t = _jinja_reads((ROLE / "templates" / template).read_text())
            todo_names |= n - seen_names
            todo_templates |= t - seen_templates
            continue
        name = todo_names.pop()
        seen_names.add(name)
        if name == "__birth_stage2_staged_files":
            todo_templates |= _staged_templates() - seen_templates
        if PRIVATE.fullmatch(name):
            definition = VARS.get(name)
        elif PUBLIC.fullmatch(name):
            definition = DEFAULTS.get(name)
        else:
            definition = None
        if definition is not None:
            n, t, _ = _yaml_reads({"value": definition})
            todo_names |= n - seen_names
            todo_templates |= t - seen_templates
    return {n for n in seen_names if PUBLIC.fullmatch(n)}


def _dicts(node):
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    if isinstance(node, list):
        for v in node:
            yield from _dicts(v)


def entry_points() -> list[tuple[str, str]]:
    """(playbook, entry point) of every use of the role: in roles: (main) or by tasks_from."""
    found = set()
    for playbook in [REPO / "stage2.yml", *(REPO / "playbooks").glob("*.yml")]:
        for d in _dicts(yaml.safe_load(playbook.read_text())):
            if d.get("role") == ROLE.name or d.get("name") == ROLE.name:
                entry_point = d.get("tasks_from", "main")
                found.add((playbook.relative_to(REPO).as_posix(), entry_point))
    return sorted(found)


ENTRY_POINTS = entry_points()
SUB_ENTRY_POINTS = sorted({e for _, e in ENTRY_POINTS} - {"main"})


@pytest.mark.parametrize("role", ["birth_stage2", "lab"])
def test_spec_and_defaults_agree(role):
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    spec = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert set(options) == set(defaults), "names differ between spec and defaults"
    for name, value in defaults.items():
        opt = options[name]
        assert opt.get("description"), f"{name} has no description"
        if isinstance(value, str) and "{{" in value:
            assert "default" not in opt, f"{name}: a templated default belongs in defaults only"
        elif "default" in opt:
            assert opt["default"] == value, f"{name}: spec default {opt['default']!r} != {value!r}"


def test_the_scan_finds_the_entry_points():
    assert {"main", "review", "permit", "render"} <= {e for _, e in ENTRY_POINTS}


@pytest.mark.parametrize(("playbook", "entry_point"), ENTRY_POINTS)
def test_every_entry_point_has_a_spec(playbook, entry_point):
    # Ansible validates the spec named exactly like tasks_from: `tasks_from: review.yml`
    # would look for an entry point "review.yml", find none and validate nothing.
    assert entry_point in SPECS, (
        f"{playbook}: no argument spec {entry_point!r} in meta/argument_specs.yml "
        "(tasks_from names the entry point without .yml)"
    )
    assert SPECS[entry_point].get("short_description"), entry_point


def test_main_declares_what_it_reads():
    undeclared = reads("main") - set(SPECS["main"]["options"])
    assert not undeclared, f"main reads undeclared variables: {sorted(undeclared)}"


@pytest.mark.parametrize("entry_point", SUB_ENTRY_POINTS)
def test_entry_point_declares_exactly_what_it_reads(entry_point):
    read, declared = reads(entry_point), set(SPECS[entry_point]["options"])
    assert not read - declared, f"{entry_point} reads undeclared: {sorted(read - declared)}"
    assert not declared - read, f"{entry_point} declares unread: {sorted(declared - read)}"


@pytest.mark.parametrize("entry_point", SUB_ENTRY_POINTS)
def test_entry_point_options_agree_with_main(entry_point):
    main = SPECS["main"]["options"]
    for name, opt in SPECS[entry_point]["options"].items():
        assert opt.get("description"), f"{entry_point}: {name} has no description"
        if name not in main:
            # Nothing in defaults gives it a value: the entry point must be told it.
            assert opt.get("required") and "default" not in opt, f"{entry_point}: {name}"
            continue
        for field in ("type", "elements", "default", "choices", "required"):
            assert opt.get(field) == main[name].get(field), f"{entry_point}: {name}.{field}"
