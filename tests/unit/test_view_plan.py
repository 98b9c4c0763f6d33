"""__birth_stage2_view_plan (roles/birth_stage2/vars/main.yml), the one list of the Stage 2
views: it names every view of birth_stage2_views once, each template exists and creates its
own view, the order is a creation order (every view after the views it reads), and each
view's number and role are the ones docs/guard-views.md gives it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jinja2
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "birth_stage2"
VARS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
PLAN = VARS["__birth_stage2_view_plan"]
KEYS = [v["key"] for v in PLAN]
ROLES = {"safety", "readiness", "report", "catalogue"}
# docs/guard-views.md's table: | # | track | view | kind | checks |
DOC_ROW = re.compile(r"^\| (\d+) \| [^|]+ \| [^|]+ \| ([a-z]+)", re.M)
DOC_KIND = {"safety": "safety", "readiness": "readiness", "report": "report", "union": "catalogue"}


def _text(view: dict) -> str:
    return (ROLE / "templates" / view["template"]).read_text()


def test_every_view_once_and_only_the_views():
    assert len(KEYS) == len(set(KEYS))
    assert set(KEYS) == set(DEFAULTS["birth_stage2_views"])
    assert all(set(v) == {"key", "number", "role", "template"} for v in PLAN)
    assert all(v["role"] in ROLES for v in PLAN)


def test_one_catalogue_and_it_comes_last():
    assert [v["key"] for v in PLAN if v["role"] == "catalogue"] == [KEYS[-1]]


def test_each_template_exists_and_creates_its_own_view():
    for view in PLAN:
        text = _text(view)
        created = re.findall(r"CREATE OR REPLACE VIEW \{\{ lib\.view\('(\w+)'\) \}\}", text)
        assert created == [view["key"]], view["template"]


def test_no_view_template_outside_the_plan():
    listed = {v["template"] for v in PLAN}
    found = {
        p.relative_to(ROLE / "templates").as_posix()
        for p in (ROLE / "templates" / "sql" / "views").glob("*.j2")
    }
    assert found == listed


def test_every_view_comes_after_the_views_it_reads():
    for i, view in enumerate(PLAN):
        text = _text(view)
        earlier = set(KEYS[:i])
        # by name, and by role through the list (qt001_no_go's safety guards, the catalogue's)
        reads = set(re.findall(r"lib\.view\('(\w+)'\)", text)) - {view["key"]}
        for role in re.findall(r"view\.role (?:==|in) ([^ %-]+)", text):
            wanted = ast.literal_eval(role)
            wanted = {wanted} if isinstance(wanted, str) else set(wanted)
            reads |= {v["key"] for v in PLAN if v["role"] in wanted}
        late = sorted(reads - earlier)
        assert not late, f"{view['key']} reads {late}, not created before it"


def test_numbers_and_roles_are_those_of_the_docs():
    table = DOC_ROW.findall((REPO / "docs" / "guard-views.md").read_text())
    doc = {int(n): DOC_KIND[kind] for n, kind in table}
    assert {v["number"]: v["role"] for v in PLAN} == doc


def test_the_default_readiness_views_are_the_readiness_role():
    readiness = {v["key"] for v in PLAN if v["role"] == "readiness"}
    assert set(DEFAULTS["birth_stage2_readiness_views"]) == readiness


def test_view_keys_keep_the_documented_order():
    # preflight names missing keys in this order; the defaults' map is in the same order
    jinja = jinja2.Environment()  # noqa: S701 (renders a list, not HTML)
    keys = jinja.from_string(VARS["__birth_stage2_view_keys"]).render(__birth_stage2_view_plan=PLAN)
    assert ast.literal_eval(keys) == list(DEFAULTS["birth_stage2_views"])
