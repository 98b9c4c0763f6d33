"""Make the project's module_utils and modules importable and runnable without Ansible.

On a target host, AnsiballZ ships ``module_utils/birth_stage2_*.py`` as
``ansible.module_utils.birth_stage2_*``. Here the files are loaded with importlib and
registered under those names, so the modules' own imports resolve. ``run_module`` runs a
module's ``main()`` the way AnsiballZ does (arguments through ``basic._ANSIBLE_ARGS``) and
returns its JSON result; ``fake_docker`` puts a ``docker`` on PATH that records its argv,
stdin and environment and answers with canned output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import ansible.module_utils
import pytest

ROOT = Path(__file__).resolve().parents[2]
UTILS = (
    "birth_stage2_psql",
    "birth_stage2_guard",
    "birth_stage2_lock",
    "birth_stage2_signature",
    "birth_stage2_files",
)  # dependency order


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


for _name in UTILS:
    setattr(
        ansible.module_utils,
        _name,
        _load(f"ansible.module_utils.{_name}", ROOT / "module_utils" / f"{_name}.py"),
    )


def load_action(name):
    """The role's action plugin ``name``, loaded as a plain module. Loading Ansible's
    controller code marks the whole process as the controller, after which the modules
    run_module runs send their warnings to the display instead of their result: the mark is
    put back."""
    from ansible.module_utils import _internal

    target_side = _internal.is_controller
    try:
        return _load(
            f"birth_test_action_{name}",
            ROOT / "roles" / "birth_stage2" / "action_plugins" / f"{name}.py",
        )
    finally:
        _internal.is_controller = target_side


@pytest.fixture
def run_module(capsys):
    """run_module(name, args, check_mode=False) -> the module's result dict."""
    from ansible.module_utils import basic

    def _run(name, args, check_mode=False):
        payload = dict(args, _ansible_check_mode=check_mode)
        basic._ANSIBLE_ARGS = json.dumps({"ANSIBLE_MODULE_ARGS": payload}).encode()
        basic._ANSIBLE_PROFILE = "legacy"
        module = _load(f"birth_test_module_{name}", ROOT / "library" / f"{name}.py")
        capsys.readouterr()
        with pytest.raises(SystemExit):
            module.main()
        out = capsys.readouterr().out
        return json.loads(out[out.index("{") :])

    return _run


FAKE_DOCKER = """\
#!{python}
# Stand-in for `docker exec -i ... psql`: records what it was given, answers as told.
import json, os, sys

record = os.environ["FAKE_DOCKER_DIR"]
stdin = sys.stdin.read()
with open(os.path.join(record, "argv.json"), "w") as f:
    json.dump(sys.argv, f)
with open(os.path.join(record, "stdin.sql"), "w") as f:
    f.write(stdin)
with open(os.path.join(record, "env.json"), "w") as f:
    json.dump({{"PGPASSWORD": os.environ.get("PGPASSWORD")}}, f)
fail_on = os.environ.get("FAKE_DOCKER_FAIL_ON")
if fail_on:
    # Emulate psql -f -: the error carries the stdin line of the failing statement.
    line = next(n for n, text in enumerate(stdin.splitlines(), 1) if fail_on in text)
    sys.stderr.write("psql:<stdin>:%d: ERROR:  %s\\n" % (line, os.environ["FAKE_DOCKER_MSG"]))
    sys.stderr.write(os.environ.get("FAKE_DOCKER_STDERR", ""))
    sys.exit(3)
sys.stdout.write(os.environ.get("FAKE_DOCKER_STDOUT", ""))
sys.stderr.write(os.environ.get("FAKE_DOCKER_STDERR", ""))
sys.exit(int(os.environ.get("FAKE_DOCKER_RC", "0")))
"""


class FakeDocker:
    def __init__(self, directory, monkeypatch):
        self.dir = directory
        self.monkeypatch = monkeypatch

    def answer(self, stdout="", stderr="", rc=0):
        self.monkeypatch.setenv("FAKE_DOCKER_STDOUT", stdout)
        self.monkeypatch.setenv("FAKE_DOCKER_STDERR", stderr)
        self.monkeypatch.setenv("FAKE_DOCKER_RC", str(rc))

    def answer_json(self, *documents, stderr="", t1=True):
        """Output as psql -A -t prints it: markers around one JSON document per line."""
        lines = ["@@birth_sql_t0=1700000000.100000"]
        lines += [json.dumps(doc) for doc in documents]
        if t1:
            lines.append("@@birth_sql_t1=1700000000.350000")
        self.answer("\n".join(lines) + "\n", stderr)

    def fail_on(self, text, message, stderr=""):
        self.monkeypatch.setenv("FAKE_DOCKER_FAIL_ON", text)
        self.monkeypatch.setenv("FAKE_DOCKER_MSG", message)
        self.monkeypatch.setenv("FAKE_DOCKER_STDERR", stderr)

    @property
    def called(self):
        return (self.dir / "argv.json").exists()

    @property
    def argv(self):
        return json.loads((self.dir / "argv.json").read_text())

    @property
    def stdin(self):
        return (self.dir / "stdin.sql").read_text()

    @property
    def env(self):
        return json.loads((self.dir / "env.json").read_text())


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    record = tmp_path / "record"
    bindir.mkdir()
    record.mkdir()
    script = bindir / "docker"
    script.write_text(textwrap.dedent(FAKE_DOCKER.format(python=sys.executable)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_DOCKER_DIR", str(record))
    for name in ("FAKE_DOCKER_FAIL_ON", "FAKE_DOCKER_MSG", "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    fake = FakeDocker(record, monkeypatch)
    fake.answer()
    return fake


@pytest.fixture
def connection():
    """The connection options every database module takes."""
    return {"container": "pg", "db_name": "directus", "db_user": "directus"}
