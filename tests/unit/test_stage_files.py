"""birth_stage_files: which files a staging call writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "birth_stage_files", Path(__file__).parents[2] / "library" / "birth_stage_files.py"
)
mod = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(mod)


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
