"""Rollback restores exactly what was there before Stage 2 (issue: hardened SQL path).

A registry row that already carried the classification source before Stage 2 ran (an
earlier hand classification) is not Stage 2's to clear: rollback restores only the rows
Stage 2 recorded when it wrote them, to their recorded prior values. The same for the
dot_tools rows of the apply sources (steps 04 and 05, deployed by the gated apply): a row
that was there before is put back as it was, one that was not is removed.
"""

# The SQL below is built from the lab's own names and fixed test values, never from input.
# ruff: noqa: S608

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_psql
from tests.lab.labrun import STAGING_ROOT, play, reset_lab, sql
from tests.lab.test_apply import apply, key, new_run_id, open_permit, review, summary

SOURCE = "inferred_from_existing_trigger"
REGISTRY_STATE = (
    "SELECT md5(string_agg(concat_ws('|', collection_name, birth_code_kind, birth_code_column,"
    " birth_code_source, birth_code_classified_at), ',' ORDER BY collection_name))"
    " FROM public.collection_registry"
)
PLAN_TOOL, APPLY_TOOL = "dot-birth-qt001-plan", "dot-birth-qt001-apply"
TOOLS = (
    "SELECT code, status, coalesce(description, '-'), updated_at FROM public.dot_tools"
    " ORDER BY code"
)
APPLY_SOURCE = "to_regprocedure('public.sp_dot_birth_qt001_apply(text, integer, bigint)')"


def add_tools(*rows: tuple[str, str, str | None]) -> list[str]:
    """Put dot_tools rows there before Stage 2 (an old timestamp, so a rewrite shows); the
    table as it then is."""
    values = ", ".join(
        "('{}', '{}', {}, '2025-01-02 03:04:05+00')".format(
            code, status, f"'{text}'" if text else "NULL"
        )
        for code, status, text in rows
    )
    sql(f"INSERT INTO public.dot_tools (code, status, description, updated_at) VALUES {values}")
    return sql(TOOLS)


@pytest.fixture(scope="module", autouse=True)
def lab():
    reset_lab()
    yield
    reset_lab()


def test_rollback_leaves_a_row_classified_before_stage2_alone():
    # An owner classified one collection by hand earlier, writing the same source string.
    (earlier,) = sql(
        "UPDATE public.collection_registry SET birth_code_source = "
        f"'{SOURCE}' WHERE collection_name = (SELECT min(collection_name) FROM "
        "public.collection_registry WHERE birth_code_kind IS NOT NULL AND identity_required)"
        " RETURNING collection_name"
    )
    before = sql(REGISTRY_STATE)
    rc, out = play()
    assert rc == 0, out[-3000:]
    assert (
        int(
            sql(
                "SELECT count(*) FROM public.collection_registry "
                f"WHERE birth_code_source = '{SOURCE}'"
            )[0]
        )
        > 1
    )
    # The run fence came with the run's first write (step 01) and holds its fencing token.
    assert sql("SELECT count(*) FROM public.birth_stage2_fence") == ["1"]
    rc, out = play("--tags", "rollback")
    assert rc == 0, out[-3000:]
    assert sql(REGISTRY_STATE) == before
    assert sql(
        "SELECT birth_code_source FROM public.collection_registry "
        f"WHERE collection_name = '{earlier}'"
    ) == [SOURCE]
    assert sql("SELECT to_regclass('public.birth_stage2_changes') IS NULL") == ["t"]
    assert sql("SELECT to_regclass('public.birth_stage2_fence') IS NULL") == ["t"]


def test_rollback_puts_back_the_tool_rows_an_apply_left_alone_or_changed():
    """Through the gated apply: it deploys 04 (a source_only row of the plan tool becomes
    active), then 05 (the owner's frozen apply tool is left alone) and stops at 05's verify,
    refusing the frozen tool before any batch. The rollback puts both rows back as they were."""
    reset_lab()
    before = add_tools(
        (PLAN_TOOL, "source_only", "kept by hand before Stage 2"),
        (APPLY_TOOL, "frozen", "frozen by the owner"),
    )
    run_id = new_run_id("dryrun")
    rc, out = play("-e", f"birth_stage2_run_id={run_id}", *key("alice"))
    assert rc == 0, out[-3000:]
    sha = summary(run_id)["evidence"]["sha256"]
    review(run_id, sha, "bob")
    open_permit(sha)
    proc = apply(run_id, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"dot_tools {APPLY_TOOL} is frozen, not source_only" in out, out[-3000:]
    assert sql(f"SELECT {APPLY_SOURCE} IS NOT NULL") == ["t"]
    assert sql(f"SELECT status FROM public.dot_tools WHERE code = '{PLAN_TOOL}'") == ["active"]
    rc, out = play("--tags", "rollback")
    assert rc == 0, out[-3000:]
    assert sql(TOOLS) == before
    assert sql(f"SELECT {APPLY_SOURCE} IS NULL") == ["t"]


def staged(name: str) -> str:
    """The newest staged copy of a Stage 2 SQL file (what the apply pipes into psql)."""
    files = sorted(
        Path(STAGING_ROOT).glob(f"birth-stage2-*/{name}"), key=lambda f: f.stat().st_mtime
    )
    assert files, f"{name} is not staged under {STAGING_ROOT}"
    return files[-1].read_text()


def test_rollback_removes_the_tool_rows_stage2_added_and_restores_a_changed_one():
    """04 and 05 deployed from the files a full run staged, as the apply runs them (one
    transaction each, the hardened search_path): the plan tool was not there and goes, the
    apply tool was active and comes back active with its description; a rerun of the deploys
    changes nothing and keeps the first prior."""
    reset_lab()
    before = add_tools((APPLY_TOOL, "active", "an older apply tool"))
    rc, out = play()
    assert rc == 0, out[-3000:]
    changed = []
    for name in ("04_dot_birth_qt001_plan_SOURCE.sql", "05_dot_birth_qt001_apply_SOURCE.sql") * 2:
        out = run_psql(
            f"BEGIN;\nSET LOCAL search_path = pg_catalog, pg_temp;\n{staged(name)}\nCOMMIT;\n"
        ).stdout
        changed.append(json.loads(out.splitlines()[-1])["changed"])
    assert changed == [True, True, False, False]
    assert sql(
        f"SELECT status FROM public.dot_tools WHERE code IN ('{PLAN_TOOL}', '{APPLY_TOOL}')"
        " ORDER BY code"
    ) == ["source_only", "active"]
    rc, out = play("--tags", "rollback")
    assert rc == 0, out[-3000:]
    assert sql(TOOLS) == before
    assert sql(f"SELECT count(*) FROM public.dot_tools WHERE code = '{PLAN_TOOL}'") == ["0"]
