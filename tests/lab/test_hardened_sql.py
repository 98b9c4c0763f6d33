"""The SQL path as an attacker and an unlucky on-call would try it (issue: hardened SQL path).

- Functions and an operator planted in public by an application role, each shadowing a
  built-in the generated SQL calls, never run: not in a full run, a --check run or a rollback.
- Every variable that reaches SQL, a psql line or a file name is refused at preflight, named,
  before anything runs; a psql meta-command smuggled in a value never runs.
- The wrapper itself refuses every meta-command outside its allow-list, on the VPS.
- Every session is hardened: search_path, standard_conforming_strings, the idle timeout and a
  REPEATABLE READ transaction.
- A run that crosses midnight UTC stages into one directory and reads from it.
"""

# The SQL below is built from the lab's own names and fixed test values, never from input.

from __future__ import annotations

import calendar
import contextlib
import json
import os
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import LAB_CONTAINER, LAB_DB, REPO, lab_env
from tests.lab.labrun import LOCK_PATH, STAGING_ROOT, births, play, reset_lab, sql

SHADOWS = REPO / "tests" / "fixtures" / "shadow_builtins.sql"


@pytest.fixture(scope="module", autouse=True)
def lab():
    reset_lab()
    yield
    reset_lab()


def plant_shadows() -> None:
    sql(SHADOWS.read_text())


def adhoc(module: str, args: dict, check_mode: bool = False) -> dict:
    """Run one of our modules on the lab VPS with the ansible CLI; its result."""
    env = lab_env()
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"
    # minimal: "lab-vps | STATUS => {the result as JSON}"
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.builtin.minimal"
    env["ANSIBLE_CALLBACK_RESULT_FORMAT"] = "json"
    argv = [str(REPO / ".venv" / "bin" / "ansible"), "lab-vps", "-m", module]
    argv += ["-a", json.dumps(args)] + (["--check"] if check_mode else [])
    proc = subprocess.run(argv, cwd=REPO, env=env, text=True, capture_output=True, timeout=300)
    at = proc.stdout.index(" => {")
    result = json.loads(proc.stdout[at + 4 :])
    result["failed"] = proc.stdout[:at].endswith("FAILED!")
    return result


CONNECTION = {"container": LAB_CONTAINER, "db_name": LAB_DB, "db_user": "postgres"}


# --------------------------------------------------------------------------- search_path


def test_shadowing_functions_in_public_never_run():
    """A full run, --check and a rollback with every shadow planted: none of them runs."""
    reset_lab()
    plant_shadows()
    before = births()
    rc, out = play("--check")
    assert rc == 0 and "HIJACKED" not in out, out[-4000:]
    rc, out = play()
    assert rc == 0 and "HIJACKED" not in out, out[-4000:]
    rc, out = play("--tags", "rollback")
    assert rc == 0 and "HIJACKED" not in out, out[-4000:]
    assert births() == before
    # The shadows are still there and still fire for anyone who resolves through public.
    err = sql("SET search_path = public; SELECT format('%s', 'x'::text);", check=False)
    assert not err
    proc = subprocess.run(
        [
            "docker",
            "exec",
            "-i",
            LAB_CONTAINER,
            "psql",
            "-X",
            "-q",
            "-U",
            "postgres",
            "-d",
            LAB_DB,
            "-c",
            "SET search_path = public; SELECT format('%s'::text, 'x'::text);",
        ],
        env=lab_env(),
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert "HIJACKED: format(text, text)" in proc.stderr


def test_every_session_is_hardened():
    probe = (
        "SELECT json_build_object("
        "'search_path', current_setting('search_path'),"
        "'scs', current_setting('standard_conforming_strings'),"
        "'idle', current_setting('idle_in_transaction_session_timeout'),"
        "'iso', current_setting('transaction_isolation'));\n"
    )
    for read_only in (True, False):
        out = adhoc(
            "birth_sql",
            dict(
                CONNECTION,
                sql=probe,
                read_only=read_only,
                transaction="rollback",
                idle_timeout="3min",
            ),
        )
        assert out["result"] == {
            "search_path": "pg_catalog, pg_temp",
            "scs": "on",
            "idle": "3min",
            "iso": "repeatable read",
        }, out


# --------------------------------------------------------------------------- psql meta-commands


@pytest.mark.parametrize(
    "meta",
    [
        "\\! touch {marker}",
        "SELECT 1 \\g |touch {marker}",
        "\\copy (SELECT 1) TO PROGRAM 'touch {marker}'",
        "SELECT 'SELECT 1' \\gexec",
        "\\setenv PAGER 'touch {marker}'",
        "\\o |touch {marker}",
        "\\if `touch {marker}`\n\\endif",
        "SELECT 1 AS x \\gset \\\\ \\! touch {marker}",
    ],
)
@pytest.mark.parametrize("check_mode", [False, True])
def test_wrapper_refuses_meta_commands_before_psql_starts(meta, check_mode, tmp_path):
    marker = tmp_path / f"meta-{uuid.uuid4().hex}"
    body = "SELECT 1;\n" + meta.format(marker=marker) + "\nSELECT json_build_object('x', 1);\n"
    out = adhoc("birth_sql", dict(CONNECTION, sql=body), check_mode=check_mode)
    assert out.get("failed"), out
    assert "are refused" in out["msg"] or "backquote" in out["msg"] or "same line" in out["msg"]
    assert out["rc"] is None  # psql never started
    assert not marker.exists()


# --------------------------------------------------------------------------- variables

INJECTION = "QT-001\n\\! touch {marker}"
VARIABLES = [
    "birth_stage2_plan_code",
    "birth_stage2_permit_scope",
    "birth_stage2_review_subject",
    "birth_stage2_classification_source",
    "birth_stage2_lock_name",
    "birth_stage2_run_id",
    "birth_stage2_break_lock",
    "birth_stage2_run_date",
    "birth_stage2_operator",
]


@pytest.mark.parametrize("variable", VARIABLES)
def test_each_variable_is_refused_at_preflight_and_nothing_runs(variable, tmp_path):
    marker = tmp_path / f"var-{uuid.uuid4().hex}"
    before = births()
    extra = json.dumps({variable: INJECTION.format(marker=marker)})
    rc, out = play("--tags", "dryrun", "-e", extra)
    assert rc != 0
    assert "input(s), nothing was run" in out and f"{variable}=" in out, out[-3000:]
    assert not marker.exists()
    assert births() == before


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"birth_stage2_plan_code": "QT'001"}, "birth_stage2_plan_code="),
        (
            {
                "birth_stage2_apply_objects": {
                    "plan_function": "fn_dot_birth_qt001_plan",
                    "apply_procedure": "sp_x",
                    "batches_table": "b",
                    "plan_tool_code": "dot'x",
                    "apply_tool_code": "dot-y",
                }
            },
            "birth_stage2_apply_objects.plan_tool_code=",
        ),
        (
            {"birth_stage2_objects": {"birth_registry": "birth\nregistry"}},
            "birth_stage2_objects.birth_registry=",
        ),
        ({"birth_stage2_staging_root": "/opt/incomex/../../tmp"}, "birth_stage2_staging_root="),
        (
            {"birth_stage2_frozen_tools": ["dot-birth-backfill", "x'; DROP"]},
            "birth_stage2_frozen_tools[1]=",
        ),
    ],
)
def test_quotes_and_line_breaks_in_values_are_refused_by_name(extra, named):
    for check in ([], ["--check"]):
        rc, out = play("--tags", "dryrun", "-e", json.dumps(extra), *check)
        assert rc != 0 and named in out, out[-3000:]


# --------------------------------------------------------------------------- midnight


def test_a_run_crossing_midnight_stages_into_one_directory():
    """Started at 23:59:50 UTC (libfaketime), the run ends the next day in one directory."""
    reset_lab()
    env = dict(os.environ)
    env["FAKETIME_DONT_RESET"] = "1"
    proc = subprocess.run(
        [
            "faketime",
            "-f",
            "@2031-03-04 23:59:50",
            str(REPO / ".venv" / "bin" / "ansible-playbook"),
            "stage2.yml",
            "-e",
            f"birth_stage2_db_name={LAB_DB}",
            "-e",
            f"birth_stage2_staging_root={STAGING_ROOT}",
        ],
        cwd=REPO,
        env={**lab_env(), **env, "PATH": f"{REPO / '.venv' / 'bin'}:{env['PATH']}"},
        text=True,
        capture_output=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    days = sorted(p.name for p in Path(STAGING_ROOT).glob("birth-stage2-2031-03-0*"))
    assert days == ["birth-stage2-2031-03-04"], days
    staged = {p.name for p in (Path(STAGING_ROOT) / days[0]).iterdir()}
    assert {"01_classify.sql", "10_dryrun_numbers.sql", "03_apply_rehearsal.sql"} <= staged


# --------------------------------------------------------------------------- the fence


def lease_file(path: Path, run_id: str, age: int = 0, **extra) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - age))
    path.write_text(
        json.dumps(
            {
                "run_id": run_id,
                "owner": "test@lab",
                "acquired_at": stamp,
                "refreshed_at": stamp,
                **extra,
            }
        )
    )


def table_exists(name: str) -> bool:
    return sql(f"SELECT to_regclass('public.{name}') IS NOT NULL")[0] == "t"


def create_table_as(run_id: str, lease: Path, **options) -> tuple[str, dict]:
    """birth_sql creating a new table, as run `run_id` under the lease file (`options`: more
    of birth_sql's); the table's name and the module's result."""
    name = f"fence_{uuid.uuid4().hex[:8]}"
    body = f"CREATE TABLE public.{name} ();\n"
    args = dict(CONNECTION, sql=body, lease_path=str(lease), lease_run_id=run_id, **options)
    return name, adhoc("birth_sql", args)


def test_a_broken_lease_stops_the_old_runs_next_script(tmp_path):
    lease = tmp_path / "lease"
    lease_file(lease, "run-new")  # the lease was broken and taken by run-new
    name, out = create_table_as("run-old", lease)
    assert out["failed"] and out["fenced"], out
    assert "now belongs to run run-new" in out["msg"] and "nothing of this script ran" in out["msg"]
    assert not table_exists(name)


def test_a_lease_lost_while_a_script_runs_cancels_its_session(tmp_path):
    lease = tmp_path / "lease"
    lease_file(lease, "run-old")
    a, b = (f"fence_{uuid.uuid4().hex[:8]}" for _ in range(2))
    body = (
        f"CREATE TABLE public.{a} ();\nSELECT pg_sleep(20);\nCREATE TABLE public.{b} ();\n"
        "SELECT json_build_object('changed', true);\n"
    )
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(
            adhoc,
            "birth_sql",
            dict(
                CONNECTION,
                sql=body,
                transaction="none",
                lease_path=str(lease),
                lease_run_id="run-old",
                heartbeat_seconds=1,
                application_name="fence-test-old",
            ),
        )
        deadline = time.monotonic() + 60
        while not table_exists(a):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        lease_file(lease, "run-new")  # another run breaks the lease
        out = job.result(timeout=120)
    assert out["failed"] and out["fenced"], out
    assert "it was broken" in out["msg"] and "cancelled inside the container" in out["msg"]
    assert table_exists(a) and not table_exists(b)
    assert json.loads(lease.read_text())["run_id"] == "run-new"  # never taken back


def test_a_long_script_keeps_its_lease_fresh(tmp_path):
    lease = tmp_path / "lease"
    lease_file(lease, "run-long", age=7200)  # would look stale to anyone
    out = adhoc(
        "birth_sql",
        dict(
            CONNECTION,
            sql="SELECT pg_sleep(4);\nSELECT json_build_object('x', 1);\n",
            read_only=True,
            lease_path=str(lease),
            lease_run_id="run-long",
            heartbeat_seconds=1,
        ),
    )
    assert not out["failed"], out
    seen = json.loads(lease.read_text())["refreshed_at"]
    age = time.time() - calendar.timegm(time.strptime(seen, "%Y-%m-%dT%H:%M:%SZ"))
    assert age < 5


def test_an_unknown_outcome_keeps_the_lease_and_stops_the_session(tmp_path):
    lease = tmp_path / "lease"
    lease_file(lease, "run-slow")
    out = adhoc(
        "birth_sql",
        dict(
            CONNECTION,
            sql="SELECT pg_sleep(60);\nSELECT json_build_object('x', 1);\n",
            transaction="none",
            timeout=3,
            lease_path=str(lease),
            lease_run_id="run-slow",
            application_name="fence-test-slow",
        ),
    )
    assert out["failed"] and out.get("outcome_unknown"), out
    assert "Outcome unknown: the run keeps its lease" in out["msg"]
    assert "cancelled inside the container" in out["msg"]
    assert "outcome of inline sql is unknown" in json.loads(lease.read_text())["hold"]
    assert sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fence-test-slow'"
        " AND state = 'active'"
    ) == ["0"]
    kept = adhoc("birth_run_lock", {"path": str(lease), "run_id": "run-slow", "state": "released"})
    assert not kept["failed"] and "kept for run run-slow" in kept["msg"]
    assert lease.exists()


def test_check_mode_takes_the_lease_and_a_reused_run_id_is_refused():
    reset_lab()
    run_id = f"check-{uuid.uuid4().hex[:10]}"
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(play, "--check", "-e", f"birth_stage2_run_id={run_id}")
        seen = set()
        while not job.done():
            if LOCK_PATH.exists():
                with contextlib.suppress(ValueError):
                    seen.add(json.loads(LOCK_PATH.read_text())["run_id"])
            time.sleep(0.1)
        rc, out = job.result()
    assert rc == 0, out[-3000:]
    assert run_id in seen
    assert not LOCK_PATH.exists()
    rc, out = play("--tags", "dryrun", "-e", f"birth_stage2_run_id={run_id}")
    assert rc != 0 and f"refused run id {run_id}: it names an earlier run" in out, out[-2000:]


FENCE = {"table": "birth_stage2_fence", "schema": "public"}


def test_the_database_fence_refuses_a_run_whose_lease_file_still_names_it(tmp_path):
    """The lease file still names the old run (the VPS-side check passes), but the database
    has seen a greater fencing token, from the run that took the lease over: each write
    session of the old run is refused inside its transaction, nothing of it written."""
    sql(
        "CREATE TABLE IF NOT EXISTS public.birth_stage2_fence (lock_name text PRIMARY KEY,"
        " token bigint NOT NULL, run_id text NOT NULL, updated_at timestamptz);\n"
        "INSERT INTO public.birth_stage2_fence VALUES ('birth_stage2', 2000, 'run-new', now())"
        " ON CONFLICT (lock_name) DO UPDATE SET token = 2000, run_id = 'run-new';"
    )
    lease = tmp_path / "lease"
    lease_file(lease, "run-old", token=1000)
    try:
        for transaction in ("commit", "none"):
            name, out = create_table_as("run-old", lease, transaction=transaction, fence=FENCE)
            assert out["failed"] and out["fenced"], out
            assert "refused by the run fence in the database" in out["msg"], out["msg"]
            assert "run run-old with fencing token 1000" in out["msg"]
            assert "already seen run run-new with token 2000" in out["msg"]
            assert "lease was broken" in out["msg"] and "lease-broken" in out["msg"]
            assert not table_exists(name)
        assert sql("SELECT token, run_id FROM public.birth_stage2_fence") == ["2000\trun-new"]
        # The run that holds the lease now writes, and a greater token moves the fence on.
        lease_file(lease, "run-new", token=2000)
        name = f"fence_{uuid.uuid4().hex[:8]}"
        body = f"CREATE TABLE public.{name} ();\nSELECT json_build_object('changed', true);\n"
        args = dict(CONNECTION, sql=body, fence=FENCE)
        out = adhoc("birth_sql", dict(args, lease_path=str(lease), lease_run_id="run-new"))
        assert not out["failed"] and not out["fenced"], out
        assert table_exists(name)
        lease_file(lease, "run-next", token=3000)
        out = adhoc(
            "birth_sql",
            dict(
                args,
                sql="SELECT json_build_object('x', 1);\n",
                lease_path=str(lease),
                lease_run_id="run-next",
            ),
        )
        assert not out["failed"], out
        assert sql("SELECT token, run_id FROM public.birth_stage2_fence") == ["3000\trun-next"]
    finally:
        sql("DROP TABLE IF EXISTS public.birth_stage2_fence;")
