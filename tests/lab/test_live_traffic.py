"""Birth-neutrality on a live system (issue: attribute births to Stage 2's own transactions).

A bounded writer on loopback plays the application: it births a knowledge document every
0.2 s and moves rows of a planned collection, while Stage 2 runs. Stage 2 must judge only
its own births (counted inside each step's REPEATABLE READ transaction), report the rest as
births by others, and still catch a leak that happens inside its own transaction.
"""

# The SQL below is built from the lab's own names and fixed test values, never from input.
# ruff: noqa: S608

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.lab.labrun import Writer, births, play, reset_lab, sql

SOURCE = "inferred_from_existing_trigger"


@pytest.fixture(scope="module", autouse=True)
def lab():
    reset_lab()
    yield
    reset_lab()


def summary_of(out: str) -> dict:
    path = re.findall(r"Results: (\S+summary\.json)", out)[-1]
    return json.loads(Path(path).read_text())


def classified() -> int:
    return int(
        sql(
            f"SELECT count(*) FROM public.collection_registry WHERE birth_code_source = '{SOURCE}'"
        )[0]
    )


@pytest.mark.parametrize(
    ("check", "births_into"),
    [(False, "knowledge_documents"), (True, "knowledge_documents"), (False, "apr_approvals")],
    ids=["full run", "check mode", "full run, the application births into a planned collection"],
)
def test_a_run_under_traffic_judges_only_its_own_births(check, births_into):
    """The application's births are its own wherever they land: in the declared collection or
    in a planned one (the guards' counts judge the backfill's births, not the application's)."""
    reset_lab()
    with Writer(insert_into=births_into) as writer:
        rc, out = play(*(["--check"] if check else []))
    assert rc == 0, out[-4000:]
    summary = summary_of(out)
    births_ = summary["births"]
    assert births_["stage2"] == {} and births_["stage2_total"] == 0
    others = births_["by_others"]
    assert set(others) == {births_into}, others
    assert 0 < others[births_into] <= writer.made
    assert "by others during the run +" in out
    assert classified() == (0 if check else len(summary["identity"]["classified"]))


def test_a_leak_inside_stage2s_transaction_is_caught_under_traffic():
    """The H2-style trigger births on reclassification: caught inside the step, rolled back."""
    reset_lab()
    sql(
        "CREATE FUNCTION public.test_leak_births() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        "  INSERT INTO public.birth_registry (collection_name, entity_code, birth_source)\n"
        "  VALUES ('collection_registry', NEW.collection_name || '::reclassified', 'gateway');\n"
        "  RETURN NEW;\n"
        "END $$;\n"
        "CREATE TRIGGER trg_test_leak AFTER UPDATE OF birth_code_kind "
        "ON public.collection_registry FOR EACH ROW EXECUTE FUNCTION public.test_leak_births();"
    )
    with Writer():
        rc, out = play()
    assert rc != 0
    assert "birth leak during classification" in out or "own transaction" in out, out[-3000:]
    assert "01_classify.sql" in out
    assert classified() == 0
    assert sql(
        "SELECT count(*) FROM public.birth_registry WHERE entity_code LIKE '%::reclassified'"
    ) == ["0"]


def test_a_birth_hidden_by_a_deletion_is_a_violation():
    """A step that births one code and deletes another nets to zero: still refused."""
    reset_lab()
    sql(
        "CREATE FUNCTION public.test_swap_births() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        "  IF NEW.collection_name = (SELECT min(collection_name) FROM public.collection_registry"
        "      WHERE birth_code_source IS NOT DISTINCT FROM NEW.birth_code_source) THEN\n"
        "    DELETE FROM public.birth_registry WHERE id = (SELECT min(id) FROM"
        "      public.birth_registry WHERE collection_name = 'collection_registry');\n"
        "    INSERT INTO public.birth_registry (collection_name, entity_code, birth_source)\n"
        "    VALUES ('collection_registry', NEW.collection_name || '::swapped', 'gateway');\n"
        "  END IF;\n"
        "  RETURN NEW;\n"
        "END $$;\n"
        "CREATE TRIGGER trg_test_swap AFTER UPDATE OF birth_code_kind "
        "ON public.collection_registry FOR EACH ROW EXECUTE FUNCTION public.test_swap_births();"
    )
    before = births()
    rc, out = play("--tags", "classify")
    assert rc != 0, out[-3000:]
    assert "a birth hidden by a deletion" in out, out[-3000:]
    assert "nothing of it was committed" in out
    assert births() == before
    assert classified() == 0


def test_legal_states_of_a_live_system_are_reported_never_red():
    """Folder rows without a table, and another scope's consumed permit: run to the decision."""
    reset_lab()
    sql(
        "INSERT INTO public.collection_registry (collection_name, identity_required, is_governed)"
        " VALUES ('folder_reports', false, false), ('alias_rules', false, true);\n"
        "INSERT INTO public.governance_permits (scope, status, issued_by, issued_at, expires_at,"
        " consumed_at, consumed_by) VALUES ('another-scope', 'consumed', 'owner', now() - "
        "interval '40 days', now() - interval '39 days', now() - interval '39 days', 'old run');"
    )
    with Writer():
        rc, out = play()
    assert rc == 0, out[-4000:]
    summary = summary_of(out)
    assert "decide" in summary["phases"] and summary["decision"]["status"] == "NOT_READY"
    truth = sql(
        "SELECT ok, detail FROM public.v_birth_stage2_rp_object_truth_guard "
        "WHERE check_name = 'registry_rows_point_to_real_tables'"
    )
    assert truth[0].startswith("t\t"), truth
    assert "2 not identity-required without one" in truth[0]
