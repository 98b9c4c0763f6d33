"""The shared transport (module_utils/birth_stage2_psql.py) and the birth_sql module.

No database and no docker: pure functions are driven by tables; the module runs against a
fake docker (see conftest.py) that records argv/stdin/env and answers with canned output.
"""

from __future__ import annotations

import json
import sys

import pytest
from ansible.module_utils.birth_stage2_psql import (
    FENCE_REFUSED_TEXT,
    LOCK_BUSY_TEXT,
    TIMEOUT_RC,
    advisory_key,
    advisory_key_parts,
    build_command,
    check_script,
    count_lines,
    explain_error,
    parse_output,
    plan_transaction,
    quote_ident,
    quote_literal,
    quote_qualified,
    reported_changed,
    run_psql,
    scan_script,
    stderr_lines,
    wrap_script,
)

# ----------------------------------------------------------------------------- lock key


def test_advisory_key_is_stable_and_signed_64_bit():
    # Pinned: a change here would let an old and a new run hold "the same" lock at once.
    assert advisory_key("birth_stage2") == -5732522147569848466
    assert advisory_key("birth_stage2") == advisory_key("birth_stage2")
    assert advisory_key("birth_stage2") != advisory_key("birth_stage3")
    for name in ("a", "birth_stage2", "ünïcode", "x" * 500):
        assert -(2**63) <= advisory_key(name) < 2**63


@pytest.mark.parametrize("bad", ["", None, "a\x00b"])
def test_advisory_key_rejects(bad):
    with pytest.raises(ValueError):
        advisory_key(bad)


@pytest.mark.parametrize("key", [0, 1, -1, 2**31, -(2**63), 2**63 - 1, -5732522147569848466])
def test_advisory_key_parts_match_pg_locks(key):
    classid, objid = advisory_key_parts(key)
    assert 0 <= classid < 2**32 and 0 <= objid < 2**32
    unsigned = (classid << 32) | objid
    assert (unsigned - 2**64 if unsigned >= 2**63 else unsigned) == key


# ----------------------------------------------------------------------------- command


def test_build_command_shape():
    argv = build_command("docker", "pg", "directus", "directus", {"b": 2, "a": "x y"}, [])
    assert argv == [
        "docker", "exec", "-i", "pg",
        "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-U", "directus", "-d", "directus",
        "-v", "a=x y", "-v", "b=2",
        "-f", "-",
    ]  # fmt: skip


def test_build_command_passes_env_by_name_only():
    argv = build_command("docker", "pg", "u", "d", {}, ["PGPASSWORD"])
    assert argv[:5] == ["docker", "exec", "-i", "-e", "PGPASSWORD"]
    assert argv[5] == "pg"
    assert not any("=" in a and a.startswith("PGPASSWORD") for a in argv)


@pytest.mark.parametrize(
    ("value", "text"),
    [(True, "true"), (False, "false"), (7, "7"), (1.5, "1.5"), ("it's", "it's")],
)
def test_build_command_var_values(value, text):
    assert build_command("docker", "pg", "u", "d", {"v": value}, [])[-3] == f"v={text}"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"container": ""}, "container"),
        ({"container": "pg\nrm"}, "'pg\\nrm'"),
        ({"container": "-e"}, "'-e'"),
        ({"db_user": "a\x00"}, "db_user"),
        ({"db_name": None}, "db_name"),
        ({"psql_vars": {"1bad": "x"}}, "'1bad'"),
        ({"psql_vars": {"a-b": "x"}}, "'a-b'"),
        ({"psql_vars": {"ON_ERROR_STOP": "0"}}, "'ON_ERROR_STOP'"),
        ({"psql_vars": {"AUTOCOMMIT": "off"}}, "'AUTOCOMMIT'"),
        ({"psql_vars": {"v": "two\nlines"}}, "'two\\nlines'"),
        ({"psql_vars": {"v": None}}, "'v'"),
        ({"psql_vars": {"v": ["list"]}}, "['list']"),
        ({"env_names": ["PG PASSWORD"]}, "'PG PASSWORD'"),
    ],
)
def test_build_command_rejects_and_names_the_value(kwargs, named):
    args = {"docker_bin": "docker", "container": "pg", "db_user": "u", "db_name": "d"}
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        build_command(**args)
    assert named in str(err.value)


# ----------------------------------------------------------------------------- quoting


@pytest.mark.parametrize(
    ("name", "quoted"),
    [("t", '"t"'), ("Mixed", '"Mixed"'), ('a"b', '"a""b"'), ("a b;--", '"a b;--"')],
)
def test_quote_ident(name, quoted):
    assert quote_ident(name) == quoted


@pytest.mark.parametrize("bad", ["", "a\x00b", None, 3])
def test_quote_ident_rejects(bad):
    with pytest.raises(ValueError):
        quote_ident(bad)


@pytest.mark.parametrize(
    ("name", "quoted"),
    [("t", '"t"'), ("s.t", '"s"."t"'), ("s.t.u", '"s"."t.u"'), ('x".y', '"x"""."y"')],
)
def test_quote_qualified(name, quoted):
    assert quote_qualified(name) == quoted


@pytest.mark.parametrize("bad", [".t", "s.", ""])
def test_quote_qualified_rejects_empty_parts(bad):
    with pytest.raises(ValueError):
        quote_qualified(bad)


@pytest.mark.parametrize(
    ("value", "quoted"),
    [("30min", "'30min'"), ("o'brien", "'o''brien'"), ("a\\b", "E'a\\\\b'"), ("", "''")],
)
def test_quote_literal(value, quoted):
    assert quote_literal(value) == quoted


# ----------------------------------------------------------------------------- script scan

SCRIPT_OK = [
    "SELECT 1;",
    "SELECT 1;\n-- COMMIT;\n",
    "/* COMMIT; /* nested */ still comment */ SELECT 2;",
    "SELECT 'COMMIT; ROLLBACK;';",
    "SELECT E'it\\'s; COMMIT';",
    'SELECT 1 AS "COMMIT";',
    "DO $$ BEGIN UPDATE t SET a = 1; COMMIT; END $$;",
    "DO $body$ BEGIN PERFORM 1; END $body$;\nSELECT $$a;b$$;",
    "SAVEPOINT s;\nROLLBACK TO SAVEPOINT s;\nRELEASE s;",
    "ROLLBACK TO s;",
    "PREPARE q AS SELECT 1;\nEXECUTE q;",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n SELECT 1;\n"
    " SELECT CASE WHEN true THEN 1 END;\nEND;\nSELECT f();",
    "SELECT :'plan_code' AS plan;",
    "SELECT 1 \\gset\nSELECT :'x';",
    "\\if :has_view\nSELECT 1;\n\\elif :other\nSELECT 3;\n\\else\nSELECT 2;\n\\endif\n",
    "SELECT 1;\n\n   \n-- trailing comment without semicolon\n",
]


@pytest.mark.parametrize("body", SCRIPT_OK)
def test_check_script_accepts(body):
    check_script(body, "commit")


@pytest.mark.parametrize(
    ("body", "transaction", "expected"),
    [
        ("BEGIN;\nSELECT 1;\nCOMMIT;", "commit", ["line 1: BEGIN", "line 3: COMMIT"]),
        ("UPDATE t SET a = 1;\nEND;", "rollback", ["line 2: END"]),
        ("select 1;\n  commit  ;", "commit", ["line 2: COMMIT"]),
        ("ROLLBACK;", "commit", ["line 1: ROLLBACK"]),
        ("ABORT;", "commit", ["line 1: ABORT"]),
        ("START TRANSACTION;", "commit", ["line 1: START TRANSACTION"]),
        ("PREPARE TRANSACTION 'x';", "commit", ["line 1: PREPARE TRANSACTION"]),
        ("SELECT 1;\n\\connect other\n", "none", ["line 2: \\connect reconnects"]),
        ("SELECT 1;\n\\c other\n", "commit", ["line 2: \\c reconnects"]),
        ("\\q\n", "none", ["line 1: \\q quits"]),
        ("\\i /opt/x.sql\n", "commit", ["line 1: \\i reads a path"]),
        ("\\o /tmp/out\nSELECT 1;", "commit", ["line 1: \\o diverts"]),
        ("\\set ON_ERROR_STOP 0\nSELECT 1;", "none", ["line 1: \\set changes psql's variables"]),
        ("\\unset ON_ERROR_STOP\nSELECT 1;", "commit", ["line 1: \\unset changes"]),
        ("SELECT 1;\nSELECT 2", "commit", ["line 2: the last statement has no ';'"]),
        ("SELECT 'abc;\n", "commit", ["line 1: quote ' is never closed"]),
        ('SELECT "abc;\n', "commit", ['line 1: quote " is never closed']),
        ("SELECT 1;\n/* open", "commit", ["line 2: comment /* is never closed"]),
        ("DO $x$ BEGIN\nEND $y$;", "commit", ["line 1: dollar quote $x$ is never closed"]),
        ("-- only a comment\n", "commit", ["no SQL statement"]),
        ("", "commit", ["no SQL statement"]),
    ],
)
def test_check_script_refuses(body, transaction, expected):
    with pytest.raises(ValueError) as err:
        check_script(body, transaction)
    for text in expected:
        assert text in str(err.value)


# Every way psql can reach a shell, a file or a second parser through a meta-command: a
# value pasted into a template (a plan code with a newline) must never get one to run.
META_ATTACKS = [
    ("SELECT 1;\n\\! id > /tmp/x\n", "\\! runs a shell command"),
    ("SELECT 1;\n\\!id\n", "\\! runs a shell command"),
    ("SELECT 1 \\g |id\n", "\\g can pipe"),
    ("SELECT 1 \\g /tmp/out\n", "\\g can pipe"),
    ("SELECT 1 \\gx |id\n", "\\gx can pipe"),
    ("\\copy (SELECT 1) TO PROGRAM 'id'\n", "\\copy can run a program"),
    ("SELECT 'SELECT 1' \\gexec\n", "\\gexec executes query results"),
    ("\\setenv PAGER id\nSELECT 1;", "\\setenv changes the environment"),
    ("SELECT 1;\n\\w /tmp/x\n", "\\w writes a file"),
    ("\\o |id\nSELECT 1;", "\\o diverts"),
    ("\\echo hello\nSELECT 1;", "\\echo is not one the Stage 2 templates use"),
    ("\\lo_export 1 /tmp/x\nSELECT 1;", "\\lo_export is not one"),
    ("\\if `id`\nSELECT 1;\n\\endif\n", "\\if has a backquote"),
    ("SELECT 1 AS x \\gset \\\\ \\! id\n", "another meta-command on the same line"),
    ("SELECT 1 AS x \\gset a b\n", "\\gset takes at most one plain name"),
    ("SELECT 1 AS x \\gset `id`\n", "\\gset has a backquote"),
    ("-- QT-001\n\\! id\nSELECT 1;", "line 2: \\! runs a shell command"),
]


@pytest.mark.parametrize(("body", "expected"), META_ATTACKS)
@pytest.mark.parametrize("transaction", ["commit", "rollback", "none"])
def test_check_script_refuses_every_meta_command_outside_the_allow_list(
    body, expected, transaction
):
    with pytest.raises(ValueError) as err:
        check_script(body, transaction)
    assert expected in str(err.value)


@pytest.mark.parametrize(("body", "expected"), META_ATTACKS[:3])
def test_wrap_script_refuses_meta_attacks_before_anything_runs(body, expected):
    with pytest.raises(ValueError) as err:
        wrap(body)
    assert expected in str(err.value)


def test_transaction_control_is_fine_when_the_script_owns_transactions():
    check_script("BEGIN;\nUPDATE t SET a = 1;\nCOMMIT;\n", "none")


def test_scan_script_lines_and_words():
    scan = scan_script("SELECT 1;\n\nUPDATE t\n SET a = 'x\ny';\nCOMMIT;\n")
    assert scan["statements"] == [
        (1, ["SELECT", ""]),
        (3, ["UPDATE", "T", "SET"]),
        (6, ["COMMIT"]),
    ]
    assert scan["unterminated"] is None


@pytest.mark.parametrize(("body", "lines"), [("", 0), ("a;", 1), ("a;\n", 1), ("a;\nb;", 2)])
def test_count_lines(body, lines):
    assert count_lines(body) == lines


# ----------------------------------------------------------------------------- wrapping

BODY = "UPDATE t SET a = 1;\nSELECT json_build_object('changed', true);\n"


def wrap(body=BODY, **kwargs):
    args = {"lock_name": "birth_stage2", "transaction": "commit", "read_only": False}
    args.update(kwargs)
    return wrap_script(body, **args)


def test_wrap_script_layout():
    text, preamble = wrap(application_name="o'brien", statement_timeout="45min")
    lines = text.splitlines()
    assert lines[1] == "\\set ON_ERROR_STOP 1"
    assert "SET application_name = 'o''brien';" in lines
    assert "SET statement_timeout = '45min';" in lines
    assert "SET lock_timeout = '10s';" in lines
    # The body starts right after the preamble, so psql line - preamble = script line.
    assert lines[preamble] == "UPDATE t SET a = 1;"
    assert lines[preamble - 2 : preamble] == [
        "BEGIN ISOLATION LEVEL REPEATABLE READ;",
        "SET LOCAL birth_stage2.wrapped = 'on';",
    ]
    assert lines[preamble - 3].startswith("SELECT '@@birth_sql_t0='")
    assert lines[-2] == "COMMIT;"
    assert lines[-1].startswith("SELECT '@@birth_sql_t1='")
    assert text.endswith("\n")


def test_wrap_script_hardens_the_session_before_the_script():
    text, preamble = wrap(idle_timeout="2min")
    lines = text.splitlines()
    head = lines[:preamble]
    # search_path first, before the lock block or anything that names a function.
    assert lines[2] == "SET search_path = pg_catalog, pg_temp;"
    assert "SET standard_conforming_strings = on;" in head
    assert "SET idle_in_transaction_session_timeout = '2min';" in head
    assert text.index("search_path") < text.index("pg_try_advisory_lock")


@pytest.mark.parametrize("read_only", [False, True])
def test_wrap_script_every_wrapped_transaction_is_one_snapshot(read_only):
    text, preamble = wrap(read_only=read_only)
    assert text.splitlines()[preamble - 2].startswith("BEGIN ISOLATION LEVEL REPEATABLE READ")


BIRTHS = {"schema": "public", "table": "birth_registry", "allowed": {}}


def test_wrap_script_births_counts_inside_the_transaction():
    text, preamble = wrap(births=BIRTHS)
    lines = text.splitlines()
    begin = lines.index("BEGIN ISOLATION LEVEL REPEATABLE READ;")
    # The first statement after BEGIN takes the snapshot: the before-counts.
    assert lines[begin + 3] == "CREATE TEMP TABLE birth_stage2_births_before ON COMMIT DROP AS"
    assert '    FROM "public"."birth_registry" r GROUP BY 1;' in lines[begin + 2 : preamble]
    # The after-counts and the judgement run before COMMIT, the marker right after them.
    check = text.index("DO $birth_births$")
    assert text.index("UPDATE t SET a = 1;") < check < text.index("\nCOMMIT;")
    assert "RAISE EXCEPTION" in text[check:] and "rolled back" in text[check:]
    assert "SELECT '@@birth_sql_births=' || current_setting('birth_stage2.births');" in lines
    assert "  v_allowed constant jsonb := '{}'::jsonb;" in lines


def test_wrap_script_births_allowed_are_exact_literals():
    births = dict(BIRTHS, table='odd"name', allowed={"knowledge_documents": 1, "it's": -1})
    text, _ = wrap(births=births)
    assert '"public"."odd""name"' in text
    allowed = """'{"it''s": -1, "knowledge_documents": 1}'::jsonb;"""
    assert f"v_allowed constant jsonb := {allowed}" in text


@pytest.mark.parametrize(
    "kwargs", [{"read_only": True}, {"transaction": "none", "body": "SELECT 1;\n"}]
)
def test_wrap_script_births_not_counted_where_nothing_is_judged(kwargs):
    body = kwargs.pop("body", BODY)
    text, _ = wrap(body, births=BIRTHS, **kwargs)
    assert "birth_stage2_births_before" not in text


@pytest.mark.parametrize(
    ("births", "named"),
    [
        ({"schema": "public"}, "births must be"),
        (dict(BIRTHS, allowed={"x": "1"}), "births allowed['x']"),
        (dict(BIRTHS, allowed={"x": True}), "births allowed['x']"),
        (dict(BIRTHS, allowed=[1]), "mapping"),
    ],
)
def test_wrap_script_births_rejects(births, named):
    with pytest.raises(ValueError) as err:
        wrap(births=births)
    assert named in str(err.value)


def test_parse_output_reads_the_births_marker():
    out = parse_output('@@birth_sql_births={"a": 2}\n{"changed": true}\n')
    assert out["markers"]["births"] == {"a": 2}
    assert out["documents"] == [{"changed": True}]


def test_wrap_script_lock_block():
    text, _ = wrap(lock_wait_seconds=7)
    key = advisory_key("birth_stage2")
    classid, objid = advisory_key_parts(key)
    assert f"v_key constant bigint := {key};" in text
    assert "pg_try_advisory_lock(v_key)" in text
    assert "interval '7 s'" in text
    assert "PERFORM pg_sleep(0.2);" in text
    assert f"l.classid = '{classid}'::oid AND l.objid = '{objid}'::oid" in text
    assert "l.objsubid = 1" in text and "l.locktype = 'advisory'" in text
    assert LOCK_BUSY_TEXT in text
    assert "released when psql exits" in text
    # The lock comes before the t0 marker, so db_ms does not count the wait.
    assert text.index("pg_try_advisory_lock") < text.index("@@birth_sql_t0")
    # statement_timeout must not cut the lock wait short.
    assert text.index("pg_try_advisory_lock") < text.index("SET statement_timeout")


def test_wrap_script_without_lock():
    text, _ = wrap(lock_name=None)
    assert "advisory" not in text


@pytest.mark.parametrize(
    ("transaction", "read_only", "begin", "end"),
    [
        ("commit", False, "BEGIN ISOLATION LEVEL REPEATABLE READ;", "COMMIT;"),
        ("rollback", False, "BEGIN ISOLATION LEVEL REPEATABLE READ;", "ROLLBACK;"),
        ("commit", True, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;", "COMMIT;"),
        ("rollback", True, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;", "ROLLBACK;"),
    ],
)
def test_wrap_script_transactions(transaction, read_only, begin, end):
    text, preamble = wrap(transaction=transaction, read_only=read_only)
    lines = text.splitlines()
    assert lines[preamble - 2] == begin
    assert lines[-2] == end
    assert "birth_stage2.wrapped" in lines[-6]


@pytest.mark.parametrize("read_only", [False, True])
def test_wrap_script_transaction_none(read_only):
    body = "BEGIN;\nUPDATE t SET a = 1;\nCOMMIT;\n"
    text, preamble = wrap(body, transaction="none", read_only=read_only)
    lines = text.splitlines()
    assert lines[preamble : preamble + 3] == ["BEGIN;", "UPDATE t SET a = 1;", "COMMIT;"]
    assert lines[preamble - 1].startswith("SELECT '@@birth_sql_t0='")
    assert lines[-1].startswith("SELECT '@@birth_sql_t1='")
    assert "birth_stage2.wrapped" not in text
    assert ("SET default_transaction_read_only = on;" in lines) is read_only


FENCE = {
    "token": 1764125000123,
    "lock_name": "birth_stage2",
    "run_id": "20251126T024100-o'brien",
    "table": "birth_stage2_fence",
    "schema": "public",
}


@pytest.mark.parametrize("transaction", ["commit", "rollback"])
def test_wrap_script_fence_checks_inside_the_transaction(transaction):
    text, preamble = wrap(transaction=transaction, fence=FENCE, births=BIRTHS)
    lines = text.splitlines()
    head = lines[:preamble]
    # Session level, before the transaction: the apply procedure reads it at every batch.
    setting = "SET birth_stage2.fence_token = '1764125000123';"
    begin = head.index("BEGIN ISOLATION LEVEL REPEATABLE READ;")
    assert head.index(setting) < begin
    # Right after BEGIN, before the births are counted and before the script.
    fence_at = head.index("DO $birth_fence$")
    assert (
        begin
        < fence_at
        < head.index("CREATE TEMP TABLE birth_stage2_births_before ON COMMIT DROP AS")
    )
    block = "\n".join(head[fence_at:])
    assert "  v_token constant bigint := 1764125000123;" in block
    assert "  v_lock constant text := 'birth_stage2';" in block
    assert "  v_run constant text := '20251126T024100-o''brien';" in block
    # Only when the table exists, named with its schema; never lowers a greater token.
    assert """IF to_regclass('"public"."birth_stage2_fence"') IS NULL THEN""" in block
    assert 'INSERT INTO "public"."birth_stage2_fence" AS f' in block
    assert "   WHERE f.token <= EXCLUDED.token;" in block
    assert "IF NOT FOUND THEN" in block and "RAISE EXCEPTION" in block
    assert f"'{FENCE_REFUSED_TEXT}'" in block
    assert "'nothing of this step was written'" in block
    assert "HINT = 'see docs/RUNBOOK.md#lease-broken'" in block
    assert lines[preamble] == "UPDATE t SET a = 1;"


def test_wrap_script_fence_before_a_self_committing_script():
    body = "BEGIN;\nUPDATE t SET a = 1;\nCOMMIT;\n"
    text, preamble = wrap(body, transaction="none", fence=FENCE)
    head = text.splitlines()[:preamble]
    assert "SET birth_stage2.fence_token = '1764125000123';" in head
    assert "DO $birth_fence$" in head and "BEGIN ISOLATION" not in text
    assert head[-1] == "$birth_fence$;"  # the last thing before the script
    assert "'nothing of this script ran'" in text


@pytest.mark.parametrize("transaction", ["commit", "none"])
def test_wrap_script_read_only_sessions_are_not_fenced(transaction):
    text, _ = wrap(transaction=transaction, read_only=True, fence=FENCE)
    assert "fence" not in text


def test_wrap_script_without_fence_has_none():
    text, _ = wrap()
    assert "fence" not in text


@pytest.mark.parametrize(
    ("fence", "named"),
    [
        (dict(FENCE, token=None), "fence token"),
        (dict(FENCE, token="12"), "fence token"),  # noqa: S106 - not a secret
        (dict(FENCE, token=True), "fence token"),
        (dict(FENCE, token=0), "fence token"),
        (dict(FENCE, table=""), "fence table"),
        (dict(FENCE, run_id=None), "fence run_id"),
        (dict(FENCE, lock_name="x$birth_fence$y"), "quote tag"),
        (dict(FENCE, table='fen"ce\x00'), "NUL"),
        ("birth_stage2_fence", "mapping"),
    ],
)
def test_wrap_script_fence_rejects(fence, named):
    with pytest.raises(ValueError, match=named):
        wrap(fence=fence)


def test_wrap_script_adds_missing_final_newline():
    text, preamble = wrap("SELECT 1;")
    assert text.splitlines()[preamble + 1] == "DO $birth_wrap$ BEGIN"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"transaction": "maybe"}, "'maybe'"),
        ({"statement_timeout": "30 minutes; DROP"}, "statement_timeout"),
        ({"lock_timeout": "x"}, "lock_timeout 'x'"),
        ({"lock_wait_seconds": -1}, "-1"),
        ({"lock_wait_seconds": "5"}, "'5'"),
        ({"lock_name": "a$birth_lock$b"}, "quote tag"),
        ({"application_name": "a\x00"}, "NUL"),
    ],
)
def test_wrap_script_rejects(kwargs, named):
    with pytest.raises(ValueError) as err:
        wrap(**kwargs)
    assert named in str(err.value)


@pytest.mark.parametrize("timeout", ["0", "30min", "10s", "250ms", "1.5h", "2 d"])
def test_wrap_script_accepts_durations(timeout):
    wrap(statement_timeout=timeout, lock_timeout=timeout)


# ----------------------------------------------------------------------------- output


@pytest.mark.parametrize(
    ("stdout", "documents", "other", "db_ms"),
    [
        ("", [], [], None),
        ("@@birth_sql_t0=10.5\n@@birth_sql_t1=12.25\n", [], [], 1750.0),
        ('@@birth_sql_t0=1\n{"a": 1}\n@@birth_sql_t1=2\n', [{"a": 1}], [], 1000.0),
        ('{"a": 1}\n\n[1, 2]\n', [{"a": 1}, [1, 2]], [], None),
        # json_agg puts a newline between elements: one document over several lines.
        ('[{"id":1}, \n {"id":2}, \n {"id":3}]\n', [[{"id": 1}, {"id": 2}, {"id": 3}]], [], None),
        ("t\nhello world\n", [], ["t", "hello world"], None),
        ("42\nnull\n", [42, None], [], None),
        ("42 rows\n", [], ["42 rows"], None),
        ('[1,\n{"a": 1}\n', [{"a": 1}], ["[1,"], None),
        ('{"a": 1} trailing\n', [], ['{"a": 1} trailing'], None),
        ("@@birth_sql_t0=1\nx\n", [], ["x"], None),
        ("@@birth_sql_t0=oops\n", [], ["@@birth_sql_t0=oops"], None),
    ],
)
def test_parse_output(stdout, documents, other, db_ms):
    parsed = parse_output(stdout)
    assert parsed["documents"] == documents
    assert parsed["result"] == (documents[-1] if documents else None)
    assert parsed["other_lines"] == other
    assert parsed["db_ms"] == db_ms


def test_stderr_lines_strip_psql_prefix():
    stderr = "psql:<stdin>:60: NOTICE:  classified 12\n\nWARNING: x\n"
    assert stderr_lines(stderr) == ["NOTICE: classified 12", "WARNING: x"]


# ----------------------------------------------------------------------------- errors

PRE = 47  # lines of wrapper before the script's first line


@pytest.mark.parametrize(
    ("stderr", "body_lines", "expected"),
    [
        (
            'psql:<stdin>:50: ERROR:  column "kind" does not exist\n'
            "LINE 2:   SET kind = 'x'\n              ^\n",
            10,
            '01_classify.sql line 3: ERROR: column "kind" does not exist\n'
            "LINE 2:   SET kind = 'x'\n              ^",
        ),
        (
            "psql:<stdin>:48: NOTICE:  starting\n"
            'psql:<stdin>:52: ERROR:  duplicate key value violates unique constraint "u"\n'
            "DETAIL:  Key (collection_name, entity_code)=(a, b) already exists.\n"
            "HINT:  check the plan\n"
            'CONTEXT:  SQL statement "INSERT ..."\n'
            "PL/pgSQL function fn_birth_register(text,boolean) line 9 at SQL statement\n",
            10,
            '01_classify.sql line 5: ERROR: duplicate key value violates unique constraint "u"\n'
            "DETAIL: Key (collection_name, entity_code)=(a, b) already exists.\n"
            "HINT: check the plan\n"
            'CONTEXT: SQL statement "INSERT ..."',
        ),
        (
            'psql:<stdin>:5: ERROR:  invalid value for parameter "statement_timeout": "x"\n',
            10,
            "01_classify.sql (wrapper, before the script's first line): ERROR: invalid value "
            'for parameter "statement_timeout": "x"',
        ),
        (
            "psql:<stdin>:63: ERROR:  the script ended the wrapper's transaction itself\n",
            10,
            "01_classify.sql (wrapper, after the script's last line): ERROR: the script ended "
            "the wrapper's transaction itself",
        ),
        (
            "psql:<stdin>:63: ERROR:  boom\n",
            None,
            "01_classify.sql line 16: ERROR: boom",
        ),
        (
            "Error response from daemon: No such container: pg\n",
            10,
            "01_classify.sql: Error response from daemon: No such container: pg",
        ),
        (
            'psql: error: connection to server on socket "/run/postgresql/.s.PGSQL.5432" '
            'failed: FATAL:  role "x" does not exist\n',
            10,
            '01_classify.sql: psql: error: connection to server on socket "/run/postgresql/'
            '.s.PGSQL.5432" failed: FATAL:  role "x" does not exist',
        ),
        ("", 10, "01_classify.sql: psql failed without a message on stderr"),
    ],
)
def test_explain_error(stderr, body_lines, expected):
    assert explain_error(stderr, PRE, "01_classify.sql", body_lines=body_lines) == expected


def test_explain_error_lock_held_is_readable():
    error = (
        f"psql:<stdin>:41: ERROR:  Stage 2 lock 'birth_stage2' (advisory key -57) is held by "
        f"pid 4242 (application_name 'birth_stage2', backend started 2025-11-26 02:41:00+00): "
        f"{LOCK_BUSY_TEXT}\n"
    )
    hint = "HINT:  see SELECT * FROM pg_stat_activity WHERE pid = 4242;\n"
    stderr = error + hint + "CONTEXT:  PL/pgSQL function inline_code_block line 21 at RAISE\n"
    msg = explain_error(stderr, PRE, "02_views.sql", body_lines=3)
    first = msg.splitlines()[0]
    assert first.startswith("02_views.sql did not start: ERROR: Stage 2 lock 'birth_stage2'")
    assert "pid 4242" in first and "'birth_stage2'" in first and LOCK_BUSY_TEXT in first
    assert "HINT: see SELECT * FROM pg_stat_activity WHERE pid = 4242;" in msg


# ----------------------------------------------------------------------------- running


def test_run_psql_round_trip():
    argv = [sys.executable, "-c", "import sys; d = sys.stdin.read(); print(d.upper()); "
            "sys.stderr.write('note'); sys.exit(3)"]  # fmt: skip
    rc, out, err, elapsed = run_psql(argv, "select 'é';", 30, None)
    assert (rc, out.strip(), err) == (3, "SELECT 'É';", "note")
    assert elapsed >= 0


def test_run_psql_timeout():
    argv = [sys.executable, "-c", "import time; print('partial', flush=True); time.sleep(30)"]
    rc, _out, err, _ = run_psql(argv, "", 1, None)
    assert rc == TIMEOUT_RC
    assert "did not finish within 1 s" in err and "still be running" in err


def test_run_psql_missing_binary(tmp_path):
    rc, _, err, _ = run_psql([str(tmp_path / "no-docker")], "", 5, None)
    assert rc == 127 and "no-docker" in err


# ----------------------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("transaction", "read_only", "check_mode", "effective"),
    [
        ("commit", False, False, "commit"),
        ("rollback", False, False, "rollback"),
        ("none", False, False, "none"),
        ("commit", False, True, "rollback"),
        ("rollback", False, True, "rollback"),
        ("none", False, True, None),
        ("commit", True, True, "commit"),
        ("none", True, True, "none"),
    ],
)
def test_plan_transaction(transaction, read_only, check_mode, effective):
    assert plan_transaction(transaction, read_only, check_mode) == effective


@pytest.mark.parametrize(
    ("result", "read_only", "transaction", "changed"),
    [
        ({"changed": False}, False, "commit", False),
        ({"changed": True}, False, "commit", True),
        ({"changed": True}, True, "commit", False),
        ({"changed": True}, False, "rollback", False),
        ({"changed": "yes"}, False, "commit", True),
        ({"n": 1}, False, "commit", True),
        (None, False, "commit", True),
        ([1, 2], False, "rollback", False),
        (None, False, "none", True),
        ({"changed": False}, False, "none", False),
        (None, True, "none", False),
    ],
)
def test_reported_changed(result, read_only, transaction, changed):
    assert reported_changed(result, read_only=read_only, transaction=transaction) is changed


# ----------------------------------------------------------------------------- the module


@pytest.fixture
def staged(tmp_path):
    path = tmp_path / "stage" / "01_classify.sql"
    path.parent.mkdir()
    path.write_text("UPDATE collection_registry SET birth_code_kind = 'column';\n"
                    "SELECT 1;\n"
                    "SELECT json_build_object('changed', true, 'classified', 12);\n")  # fmt: skip
    return path


def test_module_reports_what_the_script_says(run_module, fake_docker, connection, staged):
    fake_docker.answer_json({"step": 1}, {"changed": False, "classified": 0})
    out = run_module("birth_sql", dict(connection, src=str(staged)))
    assert out["changed"] is False
    assert out["result"] == {"changed": False, "classified": 0}
    assert out["documents"] == [{"step": 1}, {"changed": False, "classified": 0}]
    assert out["db_ms"] == 250.0
    assert out["script"] == "01_classify.sql"
    assert out["transaction"] == "commit"
    assert out["rc"] == 0
    assert "COMMIT;" in fake_docker.stdin.splitlines()
    assert fake_docker.argv[1:4] == ["exec", "-i", "pg"]


def test_module_commit_without_changed_key_is_changed(run_module, fake_docker, connection):
    fake_docker.answer_json({"rows": 3}, stderr="psql:<stdin>:49: NOTICE:  hello\n")
    out = run_module("birth_sql", dict(connection, sql="UPDATE t SET a = 1;\nSELECT 1;\n"))
    assert out["changed"] is True
    assert out["stderr_lines"] == ["NOTICE: hello"]


def test_module_check_mode_rehearses(run_module, fake_docker, connection, staged):
    fake_docker.answer_json({"changed": True, "classified": 12})
    out = run_module("birth_sql", dict(connection, src=str(staged)), check_mode=True)
    lines = fake_docker.stdin.splitlines()
    assert "ROLLBACK;" in lines and "COMMIT;" not in lines
    assert out["transaction"] == "rollback"
    assert out["changed"] is True  # what a real run would change
    assert out["skipped_in_check_mode"] is False


def test_module_read_only_never_changed(run_module, fake_docker, connection):
    fake_docker.answer_json({"changed": True})
    for check_mode in (False, True):
        out = run_module("birth_sql", dict(connection, sql="SELECT 1;", read_only=True), check_mode)
        assert out["changed"] is False
        assert "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;" in fake_docker.stdin.splitlines()
        assert out["transaction"] == "commit"


def test_module_rollback_is_never_changed(run_module, fake_docker, connection):
    fake_docker.answer_json({"changed": True})
    out = run_module("birth_sql", dict(connection, sql="SELECT 1;", transaction="rollback"))
    assert out["changed"] is False


def test_module_skips_self_committing_script_in_check_mode(run_module, fake_docker, connection):
    args = dict(connection, sql="BEGIN;\nSELECT 1;\nCOMMIT;\n", transaction="none")
    out = run_module("birth_sql", args, check_mode=True)
    assert out["changed"] is True and out["skipped_in_check_mode"] is True
    assert out["msg"] == (
        "would run inline sql; a self-committing script cannot be rehearsed in check mode"
    )
    assert not fake_docker.called
    assert "rc" not in out  # a null rc would read as a failure


def test_module_maps_error_lines(run_module, fake_docker, connection, staged):
    fake_docker.fail_on(
        "SELECT 1;", 'relation "x" does not exist', stderr="HINT:  stage 01 first\n"
    )
    out = run_module("birth_sql", dict(connection, src=str(staged)))
    assert out["failed"] is True
    assert out["msg"] == (
        '01_classify.sql line 2: ERROR: relation "x" does not exist\nHINT: stage 01 first'
    )
    assert out["rc"] == 3
    assert out["script"] == "01_classify.sql"
    assert "psql:<stdin>:" in out["stderr"]


def test_module_missing_src(run_module, fake_docker, connection, tmp_path):
    missing = tmp_path / "nowhere" / "02_views.sql"
    out = run_module("birth_sql", dict(connection, src=str(missing)))
    assert out["failed"] is True
    assert out["msg"].startswith(f"staged file {missing} not found on ")
    assert out["msg"].endswith(
        ": run the 'stage' phase first (ansible-playbook stage2.yml --tags stage)"
    )
    assert not fake_docker.called


def test_module_refuses_script_that_would_lie(run_module, fake_docker, connection):
    out = run_module("birth_sql", dict(connection, sql="SELECT 1;\nCOMMIT;\n"), check_mode=True)
    assert out["failed"] is True
    assert out["msg"].startswith("inline sql: line 2: COMMIT manages the transaction")
    assert not fake_docker.called


def test_module_fails_without_json(run_module, fake_docker, connection):
    fake_docker.answer("@@birth_sql_t0=1\nhello\n@@birth_sql_t1=2\n")
    out = run_module("birth_sql", dict(connection, sql="SELECT 'hello';"))
    assert out["failed"] is True and "printed no JSON document" in out["msg"]
    out = run_module("birth_sql", dict(connection, sql="SELECT 'hello';", expect_json=False))
    assert out.get("failed") is not True and out["other_lines"] == ["hello"]


def test_module_fails_when_the_end_marker_is_missing(run_module, fake_docker, connection):
    fake_docker.answer_json({"changed": True}, t1=False)
    out = run_module("birth_sql", dict(connection, sql="SELECT 1;"))
    assert out["failed"] is True
    assert "ended before the wrapper's closing COMMIT" in out["msg"]


def test_module_keeps_the_password_out_of_argv_and_results(run_module, fake_docker, connection):
    secret = "s3cr3t-Pa55"  # noqa: S105 - a test value
    fake_docker.answer_json({"changed": False})
    ok = run_module("birth_sql", dict(connection, sql="SELECT 1;", db_password=secret))
    assert "-e" in fake_docker.argv and "PGPASSWORD" in fake_docker.argv
    assert secret not in json.dumps(fake_docker.argv)
    assert secret not in fake_docker.stdin
    assert fake_docker.env["PGPASSWORD"] == secret  # it did travel, through the environment
    fake_docker.fail_on("SELECT 1;", "password authentication failed")
    failed = run_module("birth_sql", dict(connection, sql="SELECT 1;", db_password=secret))
    for out in (ok, failed):
        assert secret not in json.dumps(out)
    assert failed["failed"] is True


def test_module_passes_psql_vars(run_module, fake_docker, connection):
    fake_docker.answer_json({"changed": False})
    args = dict(connection, sql="SELECT :'plan';", psql_vars={"plan": "QT-001", "n": 3})
    run_module("birth_sql", args)
    argv = fake_docker.argv
    assert argv[-6:] == ["-v", "n=3", "-v", "plan=QT-001", "-f", "-"]


def test_module_rejects_bad_psql_var(run_module, fake_docker, connection):
    args = dict(connection, sql="SELECT 1;", psql_vars={"ON_ERROR_STOP": "0"})
    out = run_module("birth_sql", args)
    assert out["failed"] is True and "'ON_ERROR_STOP'" in out["msg"]
    assert not fake_docker.called


def test_module_stages_then_runs_the_staged_text(run_module, fake_docker, connection, tmp_path):
    target = tmp_path / "dated" / "10_dryrun_numbers.sql"
    body = "SELECT json_build_object('changed', false);\n"
    fake_docker.answer_json({"changed": False})
    args = dict(connection, sql=body, stage_to=str(target), read_only=True)
    out = run_module("birth_sql", args)
    assert target.read_text() == body
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    assert oct(target.parent.stat().st_mode & 0o777) == "0o750"
    assert out["staged_changed"] is True and out["changed"] is True
    assert out["script"] == "10_dryrun_numbers.sql"
    assert body.strip() in fake_docker.stdin
    # The same text again: nothing to stage, a read-only script: no change at all.
    fake_docker.answer_json({"changed": False})
    again = run_module("birth_sql", args)
    assert again["staged_changed"] is False and again["changed"] is False


def test_module_stages_nothing_in_check_mode(run_module, fake_docker, connection, tmp_path):
    target = tmp_path / "dated" / "01_classify.sql"
    fake_docker.answer_json({"changed": True})
    out = run_module(
        "birth_sql",
        dict(connection, sql="UPDATE t SET a = 1;\nSELECT 1;\n", stage_to=str(target)),
        check_mode=True,
    )
    assert not target.exists()
    assert out["staged_changed"] is False
    assert out["transaction"] == "rollback"


def test_run_psql_watches_a_long_process_and_stops_it_at_its_time_budget():
    seen, stopped = [], []
    rc, _out, _err, _ms = run_psql(
        ["sh", "-c", "cat >/dev/null; sleep 1.3"],
        "x" * 200_000,
        10,
        watch=lambda: seen.append(1),
        every=0.3,
    )
    assert rc == 0 and len(seen) >= 2
    rc, _out, err, _ms = run_psql(
        ["sh", "-c", "sleep 5"], "", 0.5, on_timeout=lambda: stopped.append(1) or "stopped it"
    )
    assert rc == TIMEOUT_RC and stopped == [1] and "stopped it" in err
