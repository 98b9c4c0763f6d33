"""Rollback restores exactly what was there before Stage 2 (issue: hardened SQL path).

A registry row that already carried the classification source before Stage 2 ran (an
earlier hand classification) is not Stage 2's to clear: rollback restores only the rows
Stage 2 recorded when it wrote them, to their recorded prior values.
"""

# The SQL below is built from the lab's own names and fixed test values, never from input.
# ruff: noqa: S608

from __future__ import annotations

import pytest

from tests.lab.labrun import play, reset_lab, sql

SOURCE = "inferred_from_existing_trigger"
REGISTRY_STATE = (
    "SELECT md5(string_agg(concat_ws('|', collection_name, birth_code_kind, birth_code_column,"
    " birth_code_source, birth_code_classified_at), ',' ORDER BY collection_name))"
    " FROM public.collection_registry"
)


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
