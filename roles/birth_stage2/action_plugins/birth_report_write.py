"""Action birth_report_write: write a run's record on the controller, inside the worker
(see library/birth_report_write.py for the documentation).

A run's report directory, its files and its reports/latest links were written by module
tasks delegated to localhost: each one a forked interpreter importing
ansible.module_utils.basic (0.35-0.6 s of CPU each, several per run). This action does the
same writes in the controller's own worker, with no module execution and no connection.
The rules for names, change detection and atomic replace are module_utils/birth_stage2_files.py,
shared with the module birth_stage_files; the rest is the plain function write_report,
unit-tested in tests/unit/test_report_write.py.
"""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


def _load_files_utils():
    """module_utils/birth_stage2_files.py by its path: the controller has no import path for
    the project's module_utils (AnsiballZ ships them to modules only)."""
    candidates = [Path(p) for p in C.DEFAULT_MODULE_UTILS_PATH or []]
    candidates.append(Path(__file__).resolve().parents[3] / "module_utils")
    for directory in candidates:
        path = directory / "birth_stage2_files.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location("birth_stage2_files_controller", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise ImportError(f"birth_stage2_files.py not found in {[str(c) for c in candidates]}")


files_utils = _load_files_utils()

ARGUMENT_SPEC = files_utils.REPORT_WRITE_SPEC


class ReportWriteError(Exception):
    """A write that cannot be done; the message names the path and the fix."""


def octal_mode(value, option):
    """A mode as the file module takes it: a string of octal digits, or an int (YAML's 0640)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value), 8)
    except ValueError:
        raise ReportWriteError(
            f"{option} {value!r} is not an octal mode: write it as a quoted string such as '0640'"
        ) from None


def _absolute(path, option):
    path = os.path.expanduser(str(path))
    if not os.path.isabs(path):
        raise ReportWriteError(
            f"{option} must be an absolute path on the controller, got {path!r}: pass an"
            " absolute one (e.g. through the realpath filter)"
        )
    return os.path.normpath(path)


def make_dirs(path, mode):
    """Create path and its missing parents, each with exactly mode (as the file module's
    state=directory does); an existing path gets mode too. Returns True when anything changed."""
    missing = []
    current = path
    while not os.path.isdir(current):
        if os.path.lexists(current):
            raise ReportWriteError(
                f"{current} exists and is not a directory: move it away, or choose another"
                " reports directory"
            )
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        os.mkdir(directory, mode)
        os.chmod(directory, mode)
    if not missing and stat.S_IMODE(os.stat(path).st_mode) != mode:
        os.chmod(path, mode)
        return True
    return bool(missing)


def write_report(dest, files, mode="0640", dir_mode="0750", links=None, links_dir=None):
    """Write files into dest and point links at their targets; the result the task returns.

    dest is created (parents too) with dir_mode; each file is written atomically with mode,
    only when its content differs (an unchanged file only gets its mode); each link (a plain
    name in links_dir, by default dest's parent) is pointed at its target as given, replacing
    what was there in one rename. Raises ReportWriteError naming the path and the fix.
    """
    dest = _absolute(dest, "dest")
    links = dict(links or {})
    links_dir = _absolute(links_dir, "links_dir") if links_dir else os.path.dirname(dest)
    file_mode = octal_mode(mode, "mode")
    directory_mode = octal_mode(dir_mode, "dir_mode")
    if not isinstance(files, dict):
        raise ReportWriteError(f"files must be a mapping of file name -> text, got {files!r}")
    bad = files_utils.bad_names(files)
    if bad:
        raise ReportWriteError(
            f"not plain file names (no '/', no leading dot, not empty): {bad}; each file of"
            f" files is written directly in {dest}"
        )
    bad = files_utils.bad_names(links)
    if bad:
        raise ReportWriteError(
            f"not plain link names (no '/', no leading dot, not empty): {bad}; each link of"
            f" links is made directly in {links_dir}"
        )
    empty = sorted(name for name, target in links.items() if not target)
    if empty:
        raise ReportWriteError(f"links {empty} have no target: give each link its target")
    texts = {str(name): str(text) for name, text in files.items()}
    targets = {str(name): str(target) for name, target in links.items()}
    path = dest
    try:
        changed = make_dirs(dest, directory_mode)
        to_write, unchanged = files_utils.plan_writes(dest, texts, files_utils.read_text)
        for name in to_write:
            path = os.path.join(dest, name)
            files_utils.write_atomically(path, texts[name], file_mode, prefix=".report-")
        for name in unchanged:
            path = os.path.join(dest, name)
            if stat.S_IMODE(os.stat(path).st_mode) != file_mode:
                os.chmod(path, file_mode)
                changed = True
        path = links_dir
        if targets and not os.path.isdir(links_dir):
            raise ReportWriteError(
                f"links_dir {links_dir} is not a directory: create it, or give another links_dir"
            )
        relinked = []
        for name in targets:  # in the order given
            path = os.path.join(links_dir, name)
            if files_utils.link_atomically(path, targets[name], prefix=".report-link-"):
                relinked.append(name)
    except OSError as exc:
        raise ReportWriteError(
            f"cannot write the report at {path}: {exc.strerror or exc}; check that the"
            " controller user may write there (owner, mode, free space), and that a link's"
            " name is not taken by a directory"
        ) from exc
    return {
        "changed": bool(changed or to_write or relinked),
        "dest": dest,
        "written": to_write,
        "unchanged": unchanged,
        "links": {os.path.join(links_dir, name): target for name, target in targets.items()},
    }


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        try:
            result.update(
                write_report(
                    args["dest"],
                    args["files"],
                    mode=args["mode"],
                    dir_mode=args["dir_mode"],
                    links=args["links"],
                    links_dir=args["links_dir"],
                )
            )
        except ReportWriteError as exc:
            raise AnsibleActionFail(f"birth_report_write: {exc}") from exc
        return result
