"""Writing a set of named text files into one directory, as plain functions.

Shared by the module ``birth_stage_files`` (the rendered SQL staged on the VPS; AnsiballZ
ships this file as ``ansible.module_utils.birth_stage2_files``) and the role's action plugin
``birth_report_write`` (a run's record on the controller; it loads this file by its path, as
the controller has no import path for the project's module_utils). One set of rules for
which names are plain file names, which files need writing, how a file is replaced
atomically and how a symlink is repointed. No Ansible import; unit-tested in
tests/unit/test_stage_files.py and tests/unit/test_report_write.py.
"""

from __future__ import annotations

import os
import tempfile


def bad_names(names):
    """Names that are not plain file names."""
    return sorted(n for n in names if not n or "/" in n or n.startswith(".") or "\x00" in n)


def plan_writes(dest, files, read):
    """Split files into (to_write, unchanged); read(path) returns the current text or None."""
    to_write, unchanged = [], []
    for name in sorted(files):
        if read(os.path.join(dest, name)) == files[name]:
            unchanged.append(name)
        else:
            to_write.append(name)
    return to_write, unchanged


def read_text(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def _replace_atomically(path, prefix, fill):
    """Make a temporary entry beside path (mkstemp reserves its name; ``fill(fd, tmp)`` puts
    the new content there), then rename it over path; the temporary entry never stays."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=prefix)
    try:
        fill(fd, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_atomically(path, text, mode, prefix=".staging-"):
    """Write text to a temporary file beside path, then rename it over path."""

    def fill(fd, tmp):
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)

    _replace_atomically(path, prefix, fill)


def link_atomically(path, target, prefix=".link-"):
    """Point the symlink path at target (as given, relative or not), replacing whatever link
    or file is there in one rename; a link that already points there is left alone.
    Returns True when the link was created or repointed."""
    if os.path.islink(path) and os.readlink(path) == target:
        return False

    def fill(fd, tmp):
        # The symlink takes the reserved name's place.
        os.close(fd)
        os.unlink(tmp)
        os.symlink(target, tmp)

    _replace_atomically(path, prefix, fill)
    return True


# The options of birth_report_write: its action plugin validates them, and its module stub
# (library/birth_report_write.py) declares the same.
REPORT_WRITE_SPEC = {
    "dest": {"type": "path", "required": True},
    "files": {"type": "dict", "required": True},
    "mode": {"type": "raw", "default": "0640"},
    "dir_mode": {"type": "raw", "default": "0750"},
    "links": {"type": "dict", "default": {}},
    "links_dir": {"type": "path"},
}
