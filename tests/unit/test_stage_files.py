"""birth_stage_files: which files a staging call writes (module_utils/birth_stage2_files.py,
shared with the role's action plugin birth_report_write)."""

from __future__ import annotations

import pytest
from ansible.module_utils import birth_stage2_files as mod


@pytest.mark.parametrize(
    ("names", "bad"),
    [
        (["01_classify.sql", "99_rollback_stage2.sql"], []),
        (["../etc/passwd", "a/b.sql", ".hidden", ""], ["", "../etc/passwd", ".hidden", "a/b.sql"]),
    ],
)
def test_bad_names(names, bad):
    assert mod.bad_names(names) == bad


def test_plan_writes_only_what_differs():
    current = {"/d/a.sql": "same", "/d/b.sql": "old"}
    to_write, unchanged = mod.plan_writes(
        "/d", {"a.sql": "same", "b.sql": "new", "c.sql": "x"}, current.get
    )
    assert to_write == ["b.sql", "c.sql"]
    assert unchanged == ["a.sql"]


def test_write_atomically(tmp_path):
    path = tmp_path / "x.sql"
    mod.write_atomically(str(path), "SELECT 1;\n", 0o640)
    assert path.read_text() == "SELECT 1;\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["x.sql"]


def test_the_module_stages_through_the_shared_functions(run_module, tmp_path):
    dest = tmp_path / "staging"
    args = {"dest": str(dest), "files": {"a.sql": "SELECT 1;\n"}}
    first = run_module("birth_stage_files", args)
    assert first["changed"] is True
    assert first["written"] == ["a.sql"]
    assert (dest / "a.sql").read_text() == "SELECT 1;\n"
    again = run_module("birth_stage_files", args)
    assert (again["changed"], again["unchanged"]) == (False, ["a.sql"])
    refused = run_module("birth_stage_files", {"dest": str(dest), "files": {"../x": ""}})
    assert refused["failed"] is True
    assert "not plain file names" in refused["msg"]
