"""The docs point at what is there: every repo path README.md and docs/ cite exists, every
doc the code cites exists, every "contract section N" is a section of
docs/live-system-contract.md, and no Markdown table row stands outside its table.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").rglob("*") if p.is_file())]
CONTRACT = REPO / "docs" / "live-system-contract.md"
# The repo's top-level directories; a doc citing "roles/..." means a file of the repo.
TOP = (
    "bench",
    "bin",
    "callback_plugins",
    "doc_fragments",
    "docs",
    "inventories",
    "lab",
    "library",
    "module_utils",
    "molecule",
    "playbooks",
    "roles",
    "tests",
)
# Not preceded by a path character: /opt/incomex/docs/... is a VPS path, not docs/.
REPO_PATH = re.compile(r"(?<![\w/.~-])((?:" + "|".join(TOP) + r")/[\w./<>*-]*)")
# A Markdown file named without its directory (not a template such as checkpoint.md.j2).
BARE_DOC = re.compile(r"(?<![\w/.-])([\w-]+\.md)(?!\.?\w)")
# The numbered files of reports/<run_id>/ (00_checkpoint.md ...) are a run's, not the repo's.
REPORT_FILE = re.compile(r"\d\d_\w+\.md")
CONTRACT_SECTION = re.compile(r"(?:live-system-contract\.md|[Cc]ontract),? section (\d+)")
CODE_DIRS = (
    "bench",
    "roles",
    "library",
    "module_utils",
    "callback_plugins",
    "playbooks",
    "lab",
    "tests",
    "bin",
    "molecule",
)
CODE_SUFFIXES = {".py", ".yml", ".yaml", ".j2", ".sql", ".md", ".json", ""}


def _exists(cited: str) -> bool:
    """A cited path exists; <placeholders> and globs match at least one file."""
    path = re.sub(r"#.*", "", cited).rstrip(".,:;)")
    pattern = re.sub(r"<[^>]*>", "*", path).rstrip("/")
    if "*" in pattern:
        return any(REPO.glob(pattern))
    return (REPO / pattern).exists()


def _code_files():
    for top in CODE_DIRS:
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts:
                yield path


def _missing(text: str) -> list[str]:
    """What a text cites that the repo does not have: paths, and docs named bare."""
    missing = {p for p in REPO_PATH.findall(text) if not _exists(p)}
    missing |= {
        name
        for name in BARE_DOC.findall(text)
        if not REPORT_FILE.fullmatch(name)
        and not (REPO / name).exists()
        and not (REPO / "docs" / name).exists()
    }
    return sorted(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_cited_repo_paths_exist(doc):
    missing = _missing(doc.read_text())
    assert not missing, f"{doc.name} cites what the repo does not have: {missing}"


def test_docs_cited_by_the_code_exist():
    """Comments and messages that send a reader to a doc (docs/..., RUNBOOK.md) name one
    that is there."""
    missing = []
    for path in _code_files():
        for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            docs = [t for t in REPO_PATH.findall(line) if t.startswith("docs/")]
            docs += BARE_DOC.findall(line)
            missing += [
                f"{path.relative_to(REPO)}:{line_no}: {t}" for t in _missing(" ".join(docs))
            ]
    assert not missing, "\n".join(missing)


def test_contract_sections_cited_exist():
    sections = set(re.findall(r"^## (\d+)\. ", CONTRACT.read_text(), flags=re.MULTILINE))
    missing = []
    for path in [*DOCS, *_code_files()]:
        for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for number in CONTRACT_SECTION.findall(line):
                if number not in sections:
                    missing.append(f"{path.relative_to(REPO)}:{line_no}: section {number}")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize(
    "doc", [d for d in DOCS if d.suffix == ".md"], ids=lambda p: p.relative_to(REPO).as_posix()
)
def test_table_rows_stand_in_their_table(doc):
    """A row of a Markdown table follows a row or starts a table (its header, then ---)."""
    lines = doc.read_text().splitlines()
    stray = [
        f"{doc.name}:{i + 1}: {line[:60]}"
        for i, line in enumerate(lines)
        if line.startswith("|")
        and not (i > 0 and lines[i - 1].startswith("|"))
        and not (i + 1 < len(lines) and re.match(r"\|\s*:?-{3,}", lines[i + 1]))
    ]
    assert not stray, "\n".join(stray)
