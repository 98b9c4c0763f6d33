"""The lab database reproduces the live system of the checkpoint report.

Checks every figure of docs/live-system-contract.md section 5, plus the shape of the section 2
objects that lab/fixture/birth_lab.sql builds, against a freshly loaded lab database at
lab_scale=1 (the state BEFORE Stage 2). Every statement that writes runs in a transaction that
is rolled back, so the tests leave the database as they found it.

Uses the `lab_sql` fixture of tests/conftest.py: lab_sql(sql) -> list of row tuples (psql -At,
tab-separated; command tags such as BEGIN come back as one-field rows, which is why the
multi-statement checks tag their result rows with a marker).
"""

# The SQL of these tests is built from constants and from catalogue names read back from the
# lab, always quoted with ident() / lit(); nothing comes from outside the test.
# ruff: noqa: S608

import pytest

# --- the report's figures (contract section 5) ------------------------------------------------

BIRTHS = 1_210_868
REQUIRED_WITH_TABLE = 74
RESOLVABLE_BEFORE = 31
BLOCKERS = 43
CLASSIFIABLE = 39
CLASSIFIABLE_COLUMN = 7
CLASSIFIABLE_SYNTHETIC = 32
GATEWAY_TRIGGERS = 129  # the report's "tga 129"
NEEDS_OWNER_NO_ID = {"apr_request_types", "binding_registry", "nrm_doc_type_config"}
NEEDS_OWNER_COMPOSITE = {"nrm_approval_rules"}
NEEDS_OWNER = NEEDS_OWNER_NO_ID | NEEDS_OWNER_COMPOSITE
NO_TABLE_REQUIRED = {"iu_staging_payload", "iu_staging_record"}
DELTAS = {
    "dot_domain_rules": 67,
    "apr_approvals": 42,
    "normative_relations": 18,
    "apr_action_types": 6,
    "field_type_equivalences": 4,
}
DELTA_TOTAL = 137
ZERO_DELTA = 34
APR_APPROVALS_ROWS = 42
FROZEN_TOOLS = {"dot-birth-backfill", "dot-birth-trigger-setup"}
GUARD_CHECKS = {"birth_stage0_guard": 5, "birth_gateway_no_go": 4, "birth_gateway_contract": None}

# --- helpers -------------------------------------------------------------------------------------

MARK = "R"

# One row per gateway trigger: table oid, argument (NULL when none).
GATEWAY_TRIGGERS_CTE = r"""
gt AS (
  SELECT t.tgrelid, t.tgname, t.tgtype, t.tgnargs,
         CASE WHEN t.tgnargs > 0 THEN convert_from(
           substring(t.tgargs FROM 1 FOR position('\x00'::bytea IN t.tgargs) - 1), 'UTF8')
         END AS arg
  FROM pg_trigger t
  WHERE NOT t.tgisinternal AND t.tgfoid = 'public.fn_birth_registry_auto'::regproc
)"""

# Every identity-required registry row with no birth_code_kind (a blocker, or a no-table gap):
# name, has table, trigger argument count (-1 = no trigger), argument, has id column,
# primary-key columns.
BLOCKERS_SQL = f"""
WITH {GATEWAY_TRIGGERS_CTE}
SELECT r.collection_name,
       (c.oid IS NOT NULL)::text,
       coalesce(gt.tgnargs, -1)::text,
       coalesce(gt.arg, ''),
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'id'
               AND NOT a.attisdropped)::text,
       coalesce((SELECT string_agg(a.attname, ',' ORDER BY array_position(con.conkey, a.attnum))
                 FROM pg_constraint con
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey)
                 WHERE con.conrelid = c.oid AND con.contype = 'p'), '')
FROM public.collection_registry r
LEFT JOIN pg_class c ON c.relname = r.collection_name
  AND c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
LEFT JOIN gt ON gt.tgrelid = c.oid
WHERE r.identity_required AND r.birth_code_kind IS NULL
ORDER BY r.collection_name
"""


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def code_expr(table: str, arg: str) -> str:
    """The entity_code the gateway computes for a row `t` (arg '' = no argument)."""
    if arg:
        return f"(to_jsonb(t) ->> {lit(arg)})"
    return f"({lit(table)} || '::' || (to_jsonb(t) ->> 'id'))"


def marked(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Result rows tagged with MARK, without the tag (drops BEGIN, ROLLBACK, INSERT 0 1 ...)."""
    return [row[1:] for row in rows if len(row) > 1 and row[0] == MARK]


def scalar(lab_sql, sql: str) -> str:
    rows = lab_sql(sql)
    assert len(rows) == 1 and len(rows[0]) == 1, rows
    return rows[0][0]


def sqlstate_of(lab_sql, statement: str) -> tuple[str, str]:
    """Run `statement` in a rolled-back transaction; return (SQLSTATE, message), '' if none."""
    rows = lab_sql(
        f"""
        BEGIN;
        CREATE FUNCTION pg_temp.lab_try() RETURNS text LANGUAGE plpgsql AS $lab_try$
        BEGIN
          EXECUTE {lit(statement)};
          RETURN 'ok' || chr(9) || '';
        EXCEPTION WHEN OTHERS THEN
          RETURN SQLSTATE || chr(9) || SQLERRM;
        END
        $lab_try$;
        SELECT '{MARK}', pg_temp.lab_try();
        ROLLBACK;
        """
    )
    (result,) = marked(rows)
    return result[0], result[1]


def blockers(lab_sql) -> dict[str, dict]:
    out = {}
    for name, has_table, nargs, arg, has_id, pk in lab_sql(BLOCKERS_SQL):
        out[name] = {
            "has_table": has_table == "true",
            "nargs": int(nargs),
            "arg": arg,
            "has_id": has_id == "true",
            "pk": pk.split(",") if pk else [],
        }
    return out


def classifiable(lab_sql) -> dict[str, dict]:
    """The blockers Stage 2 can classify from the live trigger (the dry-run scope)."""
    return {
        name: b
        for name, b in blockers(lab_sql).items()
        if b["has_table"]
        and (b["nargs"] == 1 or (b["nargs"] == 0 and b["has_id"] and b["pk"] == ["id"]))
    }


# --- births ----------------------------------------------------------------------------------


def test_birth_count(lab_sql):
    assert int(scalar(lab_sql, "SELECT count(*) FROM public.birth_registry")) == BIRTHS


def test_birth_registry_shape(lab_sql):
    cols = lab_sql(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull::text,
               a.attidentity::text
        FROM pg_attribute a
        WHERE a.attrelid = 'public.birth_registry'::regclass AND a.attnum > 0
          AND NOT a.attisdropped
        ORDER BY a.attnum
        """
    )
    shape = {name: (typ, notnull, identity) for name, typ, notnull, identity in cols}
    assert shape["id"][0] == "bigint" and shape["id"][2] in ("a", "d")
    for col, typ in [
        ("collection_name", "text"),
        ("entity_code", "text"),
        ("birth_source", "text"),
        ("born_at", "timestamp with time zone"),
    ]:
        assert shape[col][:2] == (typ, "true"), col
    keys = {
        row[0]
        for row in lab_sql(
            """
            SELECT contype::text || ':' || (SELECT string_agg(a.attname, ',' ORDER BY a.attname)
                                      FROM pg_attribute a
                                      WHERE a.attrelid = con.conrelid
                                        AND a.attnum = ANY (con.conkey))
            FROM pg_constraint con
            WHERE con.conrelid = 'public.birth_registry'::regclass AND contype IN ('p', 'u')
            """
        )
    }
    assert keys == {"p:id", "u:collection_name,entity_code"}
    sources = {row[0] for row in lab_sql("SELECT DISTINCT birth_source FROM public.birth_registry")}
    assert sources <= {"gateway", "backfill"} and "gateway" in sources


def test_every_birth_is_a_real_row(lab_sql):
    """No orphan births: each birth is the code the collection's trigger computes for a row."""
    triggered = lab_sql(
        f"""
        WITH {GATEWAY_TRIGGERS_CTE}
        SELECT c.relname, coalesce(gt.arg, '') FROM gt JOIN pg_class c ON c.oid = gt.tgrelid
        ORDER BY 1
        """
    )
    assert len(triggered) == GATEWAY_TRIGGERS
    born = {row[0] for row in lab_sql("SELECT DISTINCT collection_name FROM public.birth_registry")}
    args = dict(triggered)
    assert born <= set(args), born - set(args)
    parts = [
        f"SELECT {lit(name)}, count(*) FROM public.birth_registry b "
        f"WHERE b.collection_name = {lit(name)} AND NOT EXISTS ("
        f"SELECT 1 FROM public.{ident(name)} t WHERE {code_expr(name, args[name])} = b.entity_code)"
        for name in sorted(born)
    ]
    orphans = {name: int(n) for name, n in lab_sql("\nUNION ALL\n".join(parts))}
    assert orphans == {name: 0 for name in born}


def test_registry_rows_are_born_in_collection_registry(lab_sql):
    missing, births, registry = lab_sql(
        """
        SELECT (SELECT count(*) FROM public.collection_registry r
                WHERE NOT EXISTS (SELECT 1 FROM public.birth_registry b
                                  WHERE b.collection_name = 'collection_registry'
                                    AND b.entity_code = r.collection_name)),
               (SELECT count(*) FROM public.birth_registry
                WHERE collection_name = 'collection_registry'),
               (SELECT count(*) FROM public.collection_registry)
        """
    )[0]
    assert missing == "0" and births == registry


# --- registry and blockers ---------------------------------------------------------------------


def test_required_collections_and_resolvable_before(lab_sql):
    with_table, resolvable, stage1, inferred = lab_sql(
        """
        SELECT count(*) FILTER (WHERE c.oid IS NOT NULL),
               count(*) FILTER (WHERE c.oid IS NOT NULL AND r.birth_code_kind IS NOT NULL),
               count(*) FILTER (WHERE r.birth_code_kind IS NOT NULL
                                AND r.birth_code_source = 'stage1_manual'),
               (SELECT count(*) FROM public.collection_registry
                WHERE birth_code_source = 'inferred_from_existing_trigger')
        FROM public.collection_registry r
        LEFT JOIN pg_class c ON c.relname = r.collection_name
          AND c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
        WHERE r.identity_required
        """
    )[0]
    assert int(with_table) == REQUIRED_WITH_TABLE
    assert int(resolvable) == RESOLVABLE_BEFORE
    assert int(stage1) == RESOLVABLE_BEFORE
    assert int(inferred) == 0  # pre-Stage-2: nothing classified from a trigger yet


def test_resolvable_before_match_their_triggers(lab_sql):
    rows = lab_sql(
        f"""
        WITH {GATEWAY_TRIGGERS_CTE}
        SELECT r.collection_name, r.birth_code_kind, coalesce(r.birth_code_column, ''),
               coalesce(gt.tgnargs, -1)::text, coalesce(gt.arg, '')
        FROM public.collection_registry r
        JOIN pg_class c ON c.relname = r.collection_name
          AND c.relnamespace = 'public'::regnamespace
        LEFT JOIN gt ON gt.tgrelid = c.oid
        WHERE r.identity_required AND r.birth_code_kind IS NOT NULL
        """
    )
    assert len(rows) == RESOLVABLE_BEFORE
    for name, kind, column, nargs, arg in rows:
        if kind == "column":
            assert (nargs, arg) == ("1", column), name
        else:
            assert (kind, nargs, column) == ("synthetic_id", "0", ""), name


def test_blockers_split(lab_sql):
    b = blockers(lab_sql)
    with_table = {n: v for n, v in b.items() if v["has_table"]}
    assert len(with_table) == BLOCKERS
    assert all(v["nargs"] >= 0 for v in with_table.values()), "every blocker has a trigger"
    column = {n for n, v in with_table.items() if v["nargs"] == 1}
    synthetic = {
        n for n, v in with_table.items() if v["nargs"] == 0 and v["has_id"] and v["pk"] == ["id"]
    }
    assert len(column) == CLASSIFIABLE_COLUMN
    assert len(synthetic) == CLASSIFIABLE_SYNTHETIC
    assert len(column | synthetic) == CLASSIFIABLE
    assert set(with_table) - column - synthetic == NEEDS_OWNER


def test_needs_owner_reasons(lab_sql):
    b = blockers(lab_sql)
    for name in NEEDS_OWNER_NO_ID:
        assert b[name]["has_table"] and b[name]["nargs"] == 0 and not b[name]["has_id"], name
    for name in NEEDS_OWNER_COMPOSITE:
        v = b[name]
        assert v["has_table"] and v["nargs"] == 0 and v["has_id"], name
        assert v["pk"] == ["id", "version"], name
    counts = lab_sql(
        "\nUNION ALL\n".join(
            f"SELECT {lit(n)}, (SELECT count(*) FROM public.{ident(n)}), "
            f"(SELECT count(*) FROM public.birth_registry WHERE collection_name = {lit(n)})"
            for n in sorted(NEEDS_OWNER)
        )
    )
    for name, rows, births in counts:
        assert int(rows) > 0 and births == "0", name


def test_column_arguments_name_existing_columns(lab_sql):
    for name, v in classifiable(lab_sql).items():
        if v["nargs"] == 1:
            found = scalar(
                lab_sql,
                f"SELECT count(*) FROM pg_attribute WHERE attrelid = "
                f"{lit('public.' + ident(name))}::regclass AND attname = {lit(v['arg'])} "
                f"AND NOT attisdropped",
            )
            assert found == "1", name


def test_no_table_required(lab_sql):
    gaps = {name for name, v in blockers(lab_sql).items() if not v["has_table"]}
    assert gaps == NO_TABLE_REQUIRED


def test_knowledge_documents_is_resolvable_synthetic(lab_sql):
    kind, nargs, has_id = lab_sql(
        f"""
        WITH {GATEWAY_TRIGGERS_CTE}
        SELECT r.birth_code_kind, gt.tgnargs::text,
               EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = gt.tgrelid
                       AND a.attname = 'id')::text
        FROM public.collection_registry r
        JOIN gt ON gt.tgrelid = 'public.knowledge_documents'::regclass
        WHERE r.collection_name = 'knowledge_documents' AND r.identity_required AND r.is_governed
        """
    )[0]
    assert (kind, nargs, has_id) == ("synthetic_id", "0", "true")


# --- triggers ----------------------------------------------------------------------------------


def test_gateway_trigger_count_and_shape(lab_sql):
    total, row_after_insert, registry_arg = lab_sql(
        f"""
        WITH {GATEWAY_TRIGGERS_CTE}
        SELECT count(*), count(*) FILTER (WHERE tgtype = 5),
               max(arg) FILTER (WHERE tgrelid = 'public.collection_registry'::regclass)
        FROM gt
        """
    )[0]
    assert int(total) == GATEWAY_TRIGGERS
    assert row_after_insert == total  # AFTER INSERT FOR EACH ROW, nothing else
    assert registry_arg == "collection_name"


def test_collection_registry_triggers(lab_sql):
    defs = [
        row[0]
        for row in lab_sql(
            """
            SELECT pg_get_triggerdef(oid) FROM pg_trigger
            WHERE tgrelid = 'public.collection_registry'::regclass AND NOT tgisinternal
            """
        )
    ]
    birth = [d for d in defs if "fn_birth_registry_auto" in d]
    assert len(birth) == 1 and " AFTER INSERT ON " in birth[0] and "FOR EACH ROW" in birth[0]
    row_other = [d for d in defs if "FOR EACH ROW" in d and d not in birth]
    assert len(row_other) >= 3  # label, description, soft gate
    for d in row_other:
        assert "INSERT OR UPDATE OF label, description ON" in d, d
    statement = [d for d in defs if "FOR EACH STATEMENT" in d]
    assert len(statement) == 1 and "UPDATE" in statement[0]


def test_update_of_birth_code_is_birth_neutral(lab_sql):
    rows = lab_sql(
        f"""
        BEGIN;
        SELECT '{MARK}', 'before', count(*) FROM public.birth_registry;
        UPDATE public.collection_registry
           SET birth_code_kind = 'synthetic_id',
               birth_code_source = 'inferred_from_existing_trigger',
               birth_code_classified_at = now()
         WHERE collection_name = 'apr_approvals';
        SELECT '{MARK}', 'after', count(*) FROM public.birth_registry;
        SELECT '{MARK}', 'resolvable', resolvable FROM public.collection_registry_stats;
        ROLLBACK;
        """
    )
    got = dict(marked(rows))
    assert got["before"] == got["after"] == str(BIRTHS)
    assert got["resolvable"] == str(RESOLVABLE_BEFORE + 1)  # the summary table was refreshed


# --- dry-run figures ---------------------------------------------------------------------------


def test_dry_run_deltas_by_fn_birth_register(lab_sql):
    scope = classifiable(lab_sql)
    assert len(scope) == CLASSIFIABLE
    rows = lab_sql(
        "\nUNION ALL\n".join(
            f"SELECT {lit(n)}, public.fn_birth_register({lit(n)}, true)" for n in sorted(scope)
        )
    )
    deltas = {name: int(n) for name, n in rows}
    assert {n: d for n, d in deltas.items() if d} == DELTAS
    assert sum(deltas.values()) == DELTA_TOTAL
    assert sum(1 for d in deltas.values() if d == 0) == ZERO_DELTA


def test_dry_run_deltas_by_anti_join(lab_sql):
    """Own computation: distinct non-NULL codes without a birth; unbirthable; duplicate risk."""
    scope = classifiable(lab_sql)
    parts = []
    for name in sorted(scope):
        src = f"(SELECT {code_expr(name, scope[name]['arg'])} AS code FROM public.{ident(name)} t)"
        parts.append(
            f"""
            SELECT {lit(name)},
                   (SELECT count(DISTINCT s.code) FROM {src} s
                    WHERE s.code IS NOT NULL AND NOT EXISTS (
                      SELECT 1 FROM public.birth_registry b
                      WHERE b.collection_name = {lit(name)} AND b.entity_code = s.code)),
                   (SELECT count(*) FROM {src} s WHERE s.code IS NULL),
                   (SELECT count(*) FROM {src} s WHERE s.code IN (
                      SELECT d.code FROM {src} d GROUP BY d.code HAVING count(*) > 1))
            """
        )
    rows = lab_sql("\nUNION ALL\n".join(parts))
    assert len(rows) == CLASSIFIABLE
    deltas = {}
    for name, delta, unbirthable, duplicates in rows:
        deltas[name] = int(delta)
        assert (unbirthable, duplicates) == ("0", "0"), name
    assert {n: d for n, d in deltas.items() if d} == DELTAS
    assert sum(deltas.values()) == DELTA_TOTAL


def test_zero_delta_collections_are_empty_or_fully_born(lab_sql):
    scope = {n: v for n, v in classifiable(lab_sql).items() if n not in DELTAS}
    assert len(scope) == ZERO_DELTA
    rows = lab_sql(
        "\nUNION ALL\n".join(
            f"SELECT {lit(n)}, (SELECT count(*) FROM public.{ident(n)}), "
            f"(SELECT count(*) FROM public.birth_registry WHERE collection_name = {lit(n)})"
            for n in sorted(scope)
        )
    )
    kinds = set()
    for name, n_rows, births in rows:
        assert n_rows == births, name
        kinds.add("empty" if n_rows == "0" else "born")
    assert kinds == {"empty", "born"}


def test_apr_approvals(lab_sql):
    rows, births = lab_sql(
        """
        SELECT (SELECT count(*) FROM public.apr_approvals),
               (SELECT count(*) FROM public.birth_registry
                WHERE collection_name = 'apr_approvals')
        """
    )[0]
    assert int(rows) == APR_APPROVALS_ROWS and births == "0"


def test_dry_run_works_in_read_only_transaction(lab_sql):
    rows = lab_sql(
        f"""
        BEGIN TRANSACTION READ ONLY;
        SELECT '{MARK}', public.fn_birth_register('dot_domain_rules', true);
        ROLLBACK;
        """
    )
    assert marked(rows) == [(str(DELTAS["dot_domain_rules"]),)]


def test_apply_rehearsal(lab_sql):
    calls = " + ".join(f"public.fn_birth_register({lit(n)}, false)" for n in sorted(DELTAS))
    rows = lab_sql(
        f"""
        BEGIN;
        SELECT '{MARK}', 'pass1', {calls};
        SELECT '{MARK}', 'pass2', {calls};
        SELECT '{MARK}', 'births', count(*) FROM public.birth_registry;
        SELECT '{MARK}', 'sources', count(*) FROM public.birth_registry
         WHERE birth_source = 'backfill' AND collection_name IN ({", ".join(map(lit, DELTAS))});
        ROLLBACK;
        SELECT '{MARK}', 'after', count(*) FROM public.birth_registry;
        """
    )
    got = dict(marked(rows))
    assert got["pass1"] == str(DELTA_TOTAL)
    assert got["pass2"] == "0"
    assert got["births"] == str(BIRTHS + DELTA_TOTAL)
    assert got["sources"] == str(DELTA_TOTAL)
    assert got["after"] == str(BIRTHS)


def test_fn_birth_register_quotes_names(lab_sql):
    rows = lab_sql(
        f"""
        BEGIN;
        CREATE TABLE public."Odd-Name X" (id bigint PRIMARY KEY, "Code Col" text);
        INSERT INTO public."Odd-Name X" SELECT g, 'c' || g FROM generate_series(1, 3) g;
        CREATE TRIGGER t AFTER INSERT ON public."Odd-Name X"
          FOR EACH ROW EXECUTE FUNCTION public.fn_birth_registry_auto();
        SELECT '{MARK}', 'dry', public.fn_birth_register('Odd-Name X', true);
        SELECT '{MARK}', 'apply', public.fn_birth_register('Odd-Name X', false);
        SELECT '{MARK}', 'again', public.fn_birth_register('Odd-Name X', false);
        INSERT INTO public."Odd-Name X" VALUES (4, 'c4');
        SELECT '{MARK}', 'codes', string_agg(entity_code, ',' ORDER BY entity_code)
          FROM public.birth_registry WHERE collection_name = 'Odd-Name X';
        CREATE TABLE public."Odd Col-Y" (id bigint PRIMARY KEY, "Code Col" text);
        INSERT INTO public."Odd Col-Y" VALUES (1, 'k1'), (2, 'k1'), (3, NULL), (4, 'k4');
        CREATE TRIGGER t AFTER INSERT ON public."Odd Col-Y"
          FOR EACH ROW EXECUTE FUNCTION public.fn_birth_registry_auto('Code Col');
        SELECT '{MARK}', 'col', public.fn_birth_register('Odd Col-Y', false);
        SELECT '{MARK}', 'colcodes', string_agg(entity_code, ',' ORDER BY entity_code)
          FROM public.birth_registry WHERE collection_name = 'Odd Col-Y';
        ROLLBACK;
        """
    )
    got = dict(marked(rows))
    assert (got["dry"], got["apply"], got["again"]) == ("3", "3", "0")
    assert got["codes"] == ",".join(f"Odd-Name X::{i}" for i in range(1, 5))
    assert (got["col"], got["colcodes"]) == ("2", "k1,k4")  # distinct, non-NULL codes


def test_fn_birth_register_raises_without_trigger(lab_sql):
    state, message = sqlstate_of(lab_sql, "SELECT public.fn_birth_register('dot_tools', true)")
    assert state == "P0001", message
    assert "no birth trigger" in message


# --- gateway behaviour -------------------------------------------------------------------------


def test_no_id_collection_refuses_new_rows(lab_sql):
    state, message = sqlstate_of(
        lab_sql,
        "INSERT INTO public.nrm_doc_type_config (doc_type, title) VALUES ('LAB-NEW', 'lab')",
    )
    assert state == "23502", message  # not_null_violation
    assert "entity_code" in message
    assert (
        scalar(
            lab_sql, "SELECT count(*) FROM public.nrm_doc_type_config WHERE doc_type = 'LAB-NEW'"
        )
        == "0"
    )


@pytest.mark.parametrize(
    "table, insert, code",
    [
        (
            "knowledge_documents",
            "INSERT INTO public.knowledge_documents (title) VALUES ('lab report') RETURNING id",
            "'knowledge_documents::' || n.id",
        ),
        (
            "dot_domain_rules",
            "INSERT INTO public.dot_domain_rules (rule_code, title) VALUES ('LAB-RULE', 'lab') "
            "RETURNING id",
            "'LAB-RULE'",
        ),
    ],
    ids=["synthetic_id", "column"],
)
def test_governed_insert_births_exactly_one(lab_sql, table, insert, code):
    rows = lab_sql(
        f"""
        BEGIN;
        CREATE TEMPORARY TABLE lab_new (id bigint) ON COMMIT DROP;
        WITH ins AS ({insert}) INSERT INTO lab_new SELECT id FROM ins;
        SELECT '{MARK}', 'births', count(*) FROM public.birth_registry;
        SELECT '{MARK}', 'mine', count(*) FROM public.birth_registry b
         WHERE b.collection_name = {lit(table)} AND b.birth_source = 'gateway'
           AND b.entity_code = (SELECT {code} FROM lab_new n);
        ROLLBACK;
        SELECT '{MARK}', 'after', count(*) FROM public.birth_registry;
        """
    )
    got = dict(marked(rows))
    assert got["births"] == str(BIRTHS + 1)
    assert got["mine"] == "1"
    assert got["after"] == str(BIRTHS)


# --- ledger, permits, reviews, tools, guards ---------------------------------------------------


def test_open_permits_and_ledger(lab_sql):
    open_permits, expired_apply, non_counting, qt001, other_done = lab_sql(
        """
        SELECT (SELECT count(*) FROM public.governance_permits
                WHERE status = 'open' AND expires_at > now()),
               (SELECT count(*) FROM public.governance_permits
                WHERE scope = 'birth-stage2-qt001-apply' AND status = 'expired'),
               (SELECT count(DISTINCT status) FROM public.governance_permits
                WHERE status IN ('expired', 'revoked', 'consumed')),
               (SELECT count(*) FROM public.birth_backfill_ledger WHERE plan_code = 'QT-001'),
               (SELECT count(*) FROM public.birth_backfill_ledger
                WHERE plan_code <> 'QT-001' AND status = 'done')
        """
    )[0]
    assert open_permits == "0"
    assert int(expired_apply) >= 1
    assert non_counting == "3"
    assert qt001 == "0"
    assert int(other_done) >= 1


def test_check_constraints(lab_sql):
    defs = {
        (table, row_def)
        for table, row_def in lab_sql(
            """
            SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
            WHERE contype = 'c' AND conrelid IN (
              'public.birth_backfill_ledger'::regclass, 'public.governance_permits'::regclass,
              'public.governance_reviews'::regclass, 'public.dot_tools'::regclass)
            """
        )
    }
    expected = {
        "birth_backfill_ledger": ["planned", "applying", "done", "failed", "cancelled"],
        "governance_permits": ["open", "consumed", "revoked", "expired"],
        "governance_reviews": ["approved", "rejected"],
        "dot_tools": ["active", "frozen", "source_only"],
    }
    for table, values in expected.items():
        assert any(t == table and all(f"'{v}'" in d for v in values) for t, d in defs), table
    assert scalar(lab_sql, "SELECT count(*) FROM public.governance_reviews") == "0"


def test_frozen_tools(lab_sql):
    status = dict(lab_sql("SELECT code, status FROM public.dot_tools"))
    assert {code: status.get(code) for code in FROZEN_TOOLS} == {c: "frozen" for c in FROZEN_TOOLS}


@pytest.mark.parametrize("view, checks", sorted(GUARD_CHECKS.items()))
def test_pre_existing_guards_green(lab_sql, view, checks):
    columns = lab_sql(
        f"""
        SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
        WHERE attrelid = 'public.{view}'::regclass AND attnum > 0 ORDER BY attnum
        """
    )
    assert columns == [("check_name", "text"), ("ok", "boolean"), ("detail", "text")]
    rows = lab_sql(f"SELECT check_name, ok::text, detail FROM public.{view}")
    if checks is not None:
        assert len(rows) == checks
    assert rows and all(ok == "true" for _, ok, _ in rows), rows
    assert len({name for name, _, _ in rows}) == len(rows)


def test_no_database_level_settings(lab_sql):
    """CREATE DATABASE ... TEMPLATE copies the lab as is: nothing set per database."""
    assert (
        scalar(
            lab_sql,
            """
        SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
        WHERE d.datname = current_database()
        """,
        )
        == "0"
    )
