"""Every report the suite produced under reports/ is knowledge-base safe: the KB's firewall
rejects fenced code blocks, so no line of a report may open one (``` or ~~~, indented or
not). Runs after the lab tests (pytest collects tests/lab/ before this file), over every run
folder under reports/: checkpoints, numbered evidence, staged SQL bundles, summary.json.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "reports"
FENCE = re.compile(r"^\s*(```|~~~)")
# Reports are what runs write for people and the knowledge base. ansible-runner's record
# (runner/) and the molecule logs are machine output, not reports.
REPORT_SUFFIXES = {".md", ".sql", ".json", ".txt"}


def report_files(root: Path = REPORTS) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and p.suffix in REPORT_SUFFIXES
        and "runner" not in p.relative_to(root).parts
    )


def fenced_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [f"{path}:{i}: {line}" for i, line in enumerate(lines, 1) if FENCE.match(line)]


def test_no_report_opens_a_fenced_code_block():
    files = report_files()
    if not any(p.name == "00_checkpoint.md" for p in files):
        pytest.skip("no checkpoint under reports/ yet: the lab tests write them")
    bad = [hit for path in files for hit in fenced_lines(path)]
    assert bad == [], "fenced code in reports:\n" + "\n".join(bad[:20])


def test_the_check_catches_every_fence(tmp_path):
    run = tmp_path / "20260101T000000000000Z"
    run.mkdir()
    (run / "00_checkpoint.md").write_text("# C\n\n```sql\nSELECT 1;\n```\n  ~~~\ninline `x`\n")
    (run / "runner").mkdir()
    (run / "runner" / "stdout.txt").write_text("```\n")
    hits = [h for p in report_files(tmp_path) for h in fenced_lines(p)]
    assert [h.split(": ", 1)[1] for h in hits] == ["```sql", "```", "  ~~~"]
