"""The rehearsal runs the apply's own code, and the apply walks every shape of table.

A copy of the pristine lab (its own database, staging root and run lease) gains, before
Stage 2, three collections of awkward shape:
  * part_coll: partitioned by range, one leaf at the first level and two under a
    sub-partitioned second level (the parent itself has no pages);
  * dropcol_coll: a column-kind code after a dropped column (attribute numbers shifted);
  * emptied_coll: a table whose first pages hold only deleted rows, with live rows after
    them (a walk that crosses empty pages), and empty_shape_coll: no rows at all.
Then the whole gated path runs through the real playbooks: a full run signed by alice
(classify, views, plan, the rehearsal), bob's review, carol's permit, the apply. The
rehearsal must equal the plan for every collection, and the apply must birth exactly the
plan in every one of them, the partitioned one included (before, it read the parent's zero
pages and marked the row failed after a green rehearsal).
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime

import pytest

from tests.conftest import LAB_CONTAINER, REPO, lab_env, lab_playbook, run_psql

DB = "birth_shapes"
PRISTINE = "birth_lab_pristine"
STAGING = f"/opt/incomex/docs/mcp-writes-{DB}"
OPERATORS = REPO / ".lab" / "operators"
EXTRA = ["-e", f"lab_db_name={DB}", "-e", f"birth_stage2_staging_root={STAGING}"]

# What each new collection lacks: rows with no birth (the table's own figures).
SHAPES = """
CREATE TABLE public.part_coll (id bigint NOT NULL, title text, PRIMARY KEY (id))
  PARTITION BY RANGE (id);
CREATE TABLE public.part_coll_a PARTITION OF public.part_coll FOR VALUES FROM (0) TO (100);
CREATE TABLE public.part_coll_b PARTITION OF public.part_coll FOR VALUES FROM (100) TO (1000)
  PARTITION BY RANGE (id);
CREATE TABLE public.part_coll_b1 PARTITION OF public.part_coll_b FOR VALUES FROM (100) TO (500);
CREATE TABLE public.part_coll_b2 PARTITION OF public.part_coll_b FOR VALUES FROM (500) TO (1000);
INSERT INTO public.part_coll (id, title)
  SELECT g, 'p' || g FROM generate_series(1, 50) g
  UNION ALL SELECT g, 'p' || g FROM generate_series(100, 149) g
  UNION ALL SELECT g, 'p' || g FROM generate_series(500, 549) g;
INSERT INTO public.birth_registry (collection_name, entity_code, birth_source)
  SELECT 'part_coll', 'part_coll::' || g, 'gateway' FROM generate_series(1, 10) g;

CREATE TABLE public.dropcol_coll (id bigint PRIMARY KEY, junk text, code text NOT NULL);
INSERT INTO public.dropcol_coll SELECT g, repeat('x', 50), 'DC-' || g FROM generate_series(1, 20) g;
ALTER TABLE public.dropcol_coll DROP COLUMN junk;
INSERT INTO public.birth_registry (collection_name, entity_code, birth_source)
  SELECT 'dropcol_coll', 'DC-' || g, 'gateway' FROM generate_series(1, 5) g;

CREATE TABLE public.emptied_coll (id bigint PRIMARY KEY, pad text);
INSERT INTO public.emptied_coll SELECT g, repeat('y', 200) FROM generate_series(1, 3000) g;
DELETE FROM public.emptied_coll WHERE id <= 2990;

CREATE TABLE public.empty_shape_coll (id bigint PRIMARY KEY, title text);

CREATE TRIGGER trg_part_coll_birth AFTER INSERT ON public.part_coll
  FOR EACH ROW EXECUTE FUNCTION public.fn_birth_registry_auto();
CREATE TRIGGER trg_dropcol_coll_birth AFTER INSERT ON public.dropcol_coll
  FOR EACH ROW EXECUTE FUNCTION public.fn_birth_registry_auto('code');
CREATE TRIGGER trg_emptied_coll_birth AFTER INSERT ON public.emptied_coll
  FOR EACH ROW EXECUTE FUNCTION public.fn_birth_registry_auto();
CREATE TRIGGER trg_empty_shape_coll_birth AFTER INSERT ON public.empty_shape_coll
  FOR EACH ROW EXECUTE FUNCTION public.fn_birth_registry_auto();
INSERT INTO public.collection_registry (collection_name, identity_required, is_governed)
VALUES ('part_coll', true, true), ('dropcol_coll', true, true), ('emptied_coll', true, true),
       ('empty_shape_coll', true, true);
"""
SHAPE_DELTAS = {"part_coll": 140, "dropcol_coll": 15, "emptied_coll": 10}


def sql(text: str) -> list[tuple[str, ...]]:
    out = run_psql(text, db=DB).stdout
    return [tuple(line.split("\t")) for line in out.splitlines() if line]


def labdb(*args: str) -> None:
    subprocess.run(
        [str(REPO / "lab" / "bin" / "labdb"), *args],
        check=True, capture_output=True, env=lab_env(), timeout=300,
    )  # fmt: skip


def playbook(*args: str) -> subprocess.CompletedProcess:
    return lab_playbook(*args, *EXTRA)


def key(name: str) -> list[str]:
    return ["-e", f"birth_stage2_signing_key={OPERATORS / name / 'id_ed25519'}"]


def run_id(tag: str) -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + tag


def summary(rid: str) -> dict:
    return json.loads((REPO / "reports" / rid / "summary.json").read_text())


def births() -> dict[str, int]:
    return {
        c: int(n) for c, n in sql("SELECT collection_name, count(*) FROM birth_registry GROUP BY 1")
    }


@pytest.fixture(scope="module")
def shapes():
    subprocess.run(["mkdir", "-p", STAGING], check=True)
    subprocess.run(["chmod", "0755", STAGING], check=True)
    labdb("reset", LAB_CONTAINER, DB, PRISTINE)
    sql(SHAPES)
    before = births()
    dry = run_id("shapes")
    full = playbook("stage2.yml", "-e", f"birth_stage2_run_id={dry}", *key("alice"))
    s = summary(dry)
    planned = dict(sql("SELECT collection_name, expected_delta FROM birth_backfill_ledger "
                       "WHERE plan_code = 'QT-001' AND status = 'planned'"))  # fmt: skip
    playbook(
        "playbooks/review.yml", *key("bob"), "-e", "birth_stage2_review_verdict=approved",
        "-e", f"birth_stage2_review_evidence={s['evidence']['sha256']}",
        "-e", f"birth_stage2_review_run={dry}",
    )  # fmt: skip
    playbook(
        "playbooks/permit.yml", "-e", "birth_stage2_permit_action=open", *key("carol"),
        "-e", f"birth_stage2_permit_evidence={s['evidence']['sha256']}",
    )  # fmt: skip
    applied = playbook(
        "stage2.yml", "--tags", "apply", "-e", f"birth_stage2_apply_confirm={dry}",
        "-e", "birth_stage2_apply_batch_size=7",
    )  # fmt: skip
    yield {
        "full": full,
        "summary": s,
        "planned": {c: int(n) for c, n in planned.items()},
        "before": before,
        "applied": applied,
        "after": births(),
        "ledger": dict(
            sql(
                "SELECT collection_name, status FROM birth_backfill_ledger "
                "WHERE plan_code = 'QT-001'"
            )
        ),
        "leaves": sql(
            "SELECT count(DISTINCT page_from || '-' || page_to), count(*), sum(births) "
            "FROM birth_stage2_apply_batches WHERE collection_name = 'part_coll'"
        ),
    }
    run_psql(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE);', db="postgres")


def test_the_plan_holds_every_shape(shapes):
    for collection, delta in SHAPE_DELTAS.items():
        assert shapes["planned"].get(collection) == delta, shapes["planned"]
    assert "empty_shape_coll" not in shapes["planned"]  # nothing to birth: not planned


def test_the_rehearsal_equals_the_plan_for_every_shape(shapes):
    rehearsal = shapes["summary"]["rehearsal"]
    assert rehearsal["pass1_by_collection"] == shapes["planned"], rehearsal
    assert set(rehearsal["pass2_by_collection"].values()) == {0}, rehearsal
    assert rehearsal["births_after_rollback"] == rehearsal["births_before"]


def test_the_apply_births_exactly_the_plan_in_every_shape(shapes):
    grown = {
        c: shapes["after"].get(c, 0) - shapes["before"].get(c, 0)
        for c in set(shapes["after"]) | set(shapes["before"])
    }
    assert {c: n for c, n in grown.items() if n} == shapes["planned"]
    assert set(shapes["ledger"].values()) == {"done"}, shapes["ledger"]


def test_the_partitioned_collection_is_walked_through_its_leaves(shapes):
    ranges, batches, born = shapes["leaves"][0]
    # Three leaves of one or two pages each, at 7 births a batch: many small batches whose
    # births add up to the plan; the parent (no pages) alone would give none.
    assert int(born) == SHAPE_DELTAS["part_coll"]
    assert int(batches) >= 3 and int(ranges) >= 1
    codes = sql("SELECT count(*) FROM birth_registry WHERE collection_name = 'part_coll' "
                "AND birth_source = 'backfill'")  # fmt: skip
    assert codes == [("140",)]


def test_every_function_stage2_deploys_pins_its_search_path(shapes):
    """The procedure cannot carry SET (it COMMITs; it pins search_path in each transaction);
    every function can, and PUBLIC may execute none of the apply's."""
    rows = sql(
        "SELECT p.proname, p.prokind, coalesce(array_to_string(p.proconfig, ','), ''),"
        " coalesce(has_function_privilege('public', p.oid, 'EXECUTE')::text, '') "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public' AND p.proname LIKE '%dot_birth_qt001%' ORDER BY 1"
    )
    assert {r[0] for r in rows} == {
        "fn_dot_birth_qt001_apply_batch",
        "fn_dot_birth_qt001_apply_source",
        "fn_dot_birth_qt001_plan",
        "sp_dot_birth_qt001_apply",
    }
    for name, kind, config, _public in rows:
        if kind == "f":
            assert config == "search_path=pg_catalog, pg_temp", name
    assert {r[0]: r[3] for r in rows if r[0] != "fn_dot_birth_qt001_plan"} == {
        "fn_dot_birth_qt001_apply_batch": "false",
        "fn_dot_birth_qt001_apply_source": "false",
        "sp_dot_birth_qt001_apply": "false",
    }
