"""House rules: every linter of the brief is clean, and every module documents itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, text=True, capture_output=True, timeout=900)


@pytest.mark.parametrize(
    "argv",
    [
        ("yamllint", "--strict", "."),
        ("ansible-lint", "--offline", "-q"),
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
    ],
    ids=["yamllint", "ansible-lint", "ruff-check", "ruff-format"],
)
def test_linter_is_clean(argv):
    proc = _run(str(BIN / argv[0]), *argv[1:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


MODULES = sorted(p.stem for p in (REPO / "library").glob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_module_documents_itself(module):
    proc = _run(str(BIN / "ansible-doc"), "-M", "library", module)
    assert proc.returncode == 0, proc.stderr
    for section in ("OPTIONS", "EXAMPLES", "RETURN VALUES"):
        assert section in proc.stdout, f"{module}: ansible-doc shows no {section}"
