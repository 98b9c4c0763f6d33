"""birth_report_write: a run's record written on the controller, in the worker.

The writes are the plain function write_report of the role's action plugin; one test runs
the action itself (ActionModule.run, with a task and no connection) for its argument checks
and its failure.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from unittest import mock

import pytest
from ansible.module_utils import _internal as module_utils_internal

# Importing controller code (the plugin imports ansible.errors and ansible.plugins) marks the
# whole process as the controller, after which the modules that conftest.run_module runs
# send their warnings to the display instead of their result: put the mark back, and set it
# only for the tests that run the action (the `controller` fixture).
_TARGET_SIDE = module_utils_internal.is_controller
SPEC = importlib.util.spec_from_file_location(
    "birth_report_write",
    Path(__file__).parents[2]
    / "roles"
    / "birth_stage2"
    / "action_plugins"
    / "birth_report_write.py",
)
rw = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(rw)
from ansible.errors import AnsibleActionFail  # noqa: E402

module_utils_internal.is_controller = _TARGET_SIDE


@pytest.fixture
def controller(monkeypatch):
    monkeypatch.setattr(module_utils_internal, "is_controller", True)


RUN = "20261202T101500123456Z-vps1"


def _mode(path):
    return os.stat(path).st_mode & 0o777


def test_writes_the_run_dir_its_files_and_the_latest_links(tmp_path):
    reports = tmp_path / "reports"
    out = rw.write_report(
        str(reports / RUN),
        {"summary.json": "{}\n", "00_checkpoint.md": "# run\n"},
        links={"latest-vps1": RUN, "latest": RUN},
    )
    assert out == {
        "changed": True,
        "dest": str(reports / RUN),
        "written": ["00_checkpoint.md", "summary.json"],
        "unchanged": [],
        "links": {str(reports / "latest"): RUN, str(reports / "latest-vps1"): RUN},
    }
    assert (reports / RUN / "summary.json").read_text() == "{}\n"
    # Modes as the file/copy tasks set them, whatever the umask: parents created too.
    assert (_mode(reports), _mode(reports / RUN)) == (0o750, 0o750)
    assert _mode(reports / RUN / "summary.json") == 0o640
    # Relative targets, as ansible.builtin.file src: <run_id> made them.
    assert os.readlink(reports / "latest") == RUN
    assert (reports / "latest" / "summary.json").read_text() == "{}\n"
    # No temporary file or link is left behind.
    assert sorted(p.name for p in reports.iterdir()) == [RUN, "latest", "latest-vps1"]
    assert sorted(p.name for p in (reports / RUN).iterdir()) == ["00_checkpoint.md", "summary.json"]


def test_a_second_write_changes_nothing_and_keeps_other_files(tmp_path):
    dest = tmp_path / RUN
    rw.write_report(str(dest), {"a.txt": "x"}, links={"latest": RUN})
    (dest / "11_upload.md").write_text("kept")
    again = rw.write_report(str(dest), {"a.txt": "x"}, links={"latest": RUN})
    assert (again["changed"], again["written"], again["unchanged"]) == (False, [], ["a.txt"])
    assert (dest / "11_upload.md").read_text() == "kept"


def test_only_what_differs_is_rewritten_and_modes_are_put_right(tmp_path):
    dest = tmp_path / RUN
    rw.write_report(str(dest), {"a.txt": "x", "b.txt": "y"})
    os.chmod(dest / "a.txt", 0o600)
    os.chmod(dest, 0o700)
    out = rw.write_report(str(dest), {"a.txt": "x", "b.txt": "z"}, mode="0640")
    assert (out["written"], out["unchanged"], out["changed"]) == (["b.txt"], ["a.txt"], True)
    assert (_mode(dest / "a.txt"), _mode(dest)) == (0o640, 0o750)


def test_links_are_repointed_at_the_newest_run(tmp_path):
    reports = tmp_path / "reports"
    rw.write_report(str(reports / "R1"), {"s": "1"}, links={"latest": "R1"})
    out = rw.write_report(str(reports / "R2"), {"s": "2"}, links={"latest": "R2"})
    assert out["changed"] is True
    assert os.readlink(reports / "latest") == "R2"
    assert (reports / "latest" / "s").read_text() == "2"


def test_a_link_replaces_a_file_of_its_name_and_links_dir_is_honoured(tmp_path):
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "latest").write_text("old file")
    rw.write_report(
        str(tmp_path / RUN),
        {"s": "1"},
        links={"latest": f"../{RUN}"},
        links_dir=str(tmp_path / "links"),
    )
    assert os.readlink(tmp_path / "links" / "latest") == f"../{RUN}"


def test_int_modes_as_yaml_reads_0640():
    assert rw.octal_mode(0o640, "mode") == 0o640
    assert rw.octal_mode("0750", "dir_mode") == 0o750


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"dest": "reports/R1"},
            "dest must be an absolute path on the controller, got 'reports/R1'",
        ),
        (
            {"files": {"../x": ""}},
            "not plain file names (no '/', no leading dot, not empty): ['../x']",
        ),
        ({"files": {".hidden": ""}}, "not plain file names"),
        ({"links": {"a/latest": "R1"}}, "not plain link names"),
        ({"links": {"latest": ""}}, "links ['latest'] have no target"),
        ({"mode": "rw-r-----"}, "mode 'rw-r-----' is not an octal mode"),
        ({"links_dir": "rel"}, "links_dir must be an absolute path"),
    ],
)
def test_refusals_name_the_problem_and_write_nothing(tmp_path, kwargs, message):
    args = {"dest": str(tmp_path / RUN), "files": {"a.txt": "x"}, **kwargs}
    with pytest.raises(rw.ReportWriteError, match=None) as caught:
        rw.write_report(**args)
    assert message in str(caught.value)
    assert not (tmp_path / RUN).exists()


def test_an_os_error_names_the_path(tmp_path):
    (tmp_path / "reports").write_text("a file where the reports directory should be")
    with pytest.raises(rw.ReportWriteError) as caught:
        rw.write_report(str(tmp_path / "reports" / RUN), {"a.txt": "x"})
    assert f"{tmp_path / 'reports'} exists and is not a directory" in str(caught.value)


def test_a_link_name_taken_by_a_directory_fails_naming_it(tmp_path):
    (tmp_path / "latest").mkdir()
    with pytest.raises(rw.ReportWriteError) as caught:
        rw.write_report(str(tmp_path / RUN), {"a.txt": "x"}, links={"latest": RUN})
    assert f"cannot write the report at {tmp_path / 'latest'}" in str(caught.value)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _action(args):
    task = mock.MagicMock(args=args, async_val=0, check_mode=True, action="birth_report_write")
    connection = mock.MagicMock()
    connection._shell.tmpdir = None
    return rw.ActionModule(task, connection, mock.MagicMock(), mock.MagicMock(), mock.MagicMock())


@pytest.mark.usefixtures("controller")
def test_the_action_writes_in_check_mode_too(tmp_path):
    out = _action({"dest": str(tmp_path / RUN), "files": {"summary.json": "{}\n"}}).run(
        task_vars={}
    )
    assert out["written"] == ["summary.json"]
    assert (tmp_path / RUN / "summary.json").read_text() == "{}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"files": {}}, "missing required arguments: dest"),
        (
            {"dest": "/x", "files": {}, "owner": "root"},
            "Invalid options for birth_report_write: owner",
        ),
        ({"dest": "relative", "files": {}}, "birth_report_write: dest must be an absolute path"),
    ],
)
@pytest.mark.usefixtures("controller")
def test_the_action_fails_clearly(args, message):
    with pytest.raises(AnsibleActionFail) as caught:
        _action(args).run(task_vars={})
    assert message in str(caught.value)
