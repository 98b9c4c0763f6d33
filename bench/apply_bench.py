#!/usr/bin/env python3
"""Apply throughput: the batched apply procedure against one INSERT ... SELECT of the same rows.

Run from the repo root with the project's venv (the lab must be up; birth_lab is not touched):

    .venv/bin/python bench/apply_bench.py [--rows 1000000] [--batch-size 5000] [--reps 3]
        [--time-box 0] [--target-ms 500] [--other-target-ms 200] [--load-sessions 3]
        [--pause-via playbook] [--markdown] [--keep]  (--help lists the load's and pause's bounds)

It builds its own lab database (birth_bench_apply, from the default fixture loaded by the lab's
own lab/bin/labdb, with its own staging root on the lab VPS; it never runs playbooks/lab.yml,
which would rewrite the shared lab's sshd configuration when run from another checkout) and
adds bench/fixtures/missing_1m.sql: one in-scope collection with --rows rows and no births.
Then, through the real playbooks, each act signed by its lab operator's key: a full Stage 2
run (alice, the dry-run), an approved review (bob) and an open permit bound to that evidence
(carol); that "ready" state is kept as a template. It times the gate's `codes` hash on that
plan and over synthetic codes: each CALL of the apply procedure runs it once, in its first
transaction, copying the collection's codes into its session's own table (batches read that
copy and do not hash again).
Each repetition then measures, on fresh copies of the same ready state:
  * one INSERT ... SELECT of the missing births (the code the trigger computes, NOT EXISTS,
    ON CONFLICT DO NOTHING: fn_birth_register's statement), timed in the database, COMMIT
    included;
  * `ansible-playbook stage2.yml --tags apply`, first batch --batch-size rows, each next
    aiming at --target-ms (birth_stage2_apply_batch_target_ms): the procedure's throughput
    for the collection (its births over the span from its first batch's start to its last
    batch's end, every COMMIT but the last inside), its batches, the longest batch
    transaction (work as the batches table records it, and start to the next batch's start,
    which adds the COMMIT), each CALL's first transaction (from the CALL's start, which a
    sampler reads from pg_stat_activity every 20 ms, to its first batch's commit: the codes
    hash and copy, the drift check and that batch), the play's wall time and the time
    outside batches (wall time minus the sum of every batch's duration_ms);
  * the same apply under a competing write load: --load-sessions psql sessions inside the
    container (its local socket: loopback only) inserting into and updating the collection
    from the apply's first batch of it until it is done, each bounded by --load-seconds and
    --load-max-rows; whether the play then ends green, and what the final cross-layer
    guard counted of the births the load's rows got from the live trigger;
  * the same apply with --other-target-ms;
  * the same apply paused (playbooks/apply_control.yml, or with --pause-via sql the control
    row's statement run directly) after --pause-after batches of the collection and resumed
    through the playbook --pause-hold s later: from the control row's set_at and the batch
    records, the time from the pause to the last batch committed, the batches started while
    it held (none expected), and every control write refused with a serialization error
    (none expected: the running apply keeps its own throttle and batch_rows in
    birth_stage2_apply_progress, apart from the operator's control row).
Batch time against its target: median and p95 of duration_ms per target, without the first
--warmup batches and the last of each collection.
Targets (issue 4): apply throughput at least half the single INSERT's; no batch over 2 s.
With --time-box S, a repetition starts only while the bench's time so far plus its longest
repetition so far stays within S seconds (the first always runs).
It writes its two sections into docs/benchmarks.md (other sections kept); with --markdown it
only prints them (bench/bench.py --apply includes them that way). Its databases are dropped
at the end (--keep keeps them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labenv import CONTAINER, LAB, REPO, VENV, env

FIXTURE = REPO / "bench" / "fixtures" / "missing_1m.sql"
OUT = REPO / "docs" / "benchmarks.md"
HEADING = "## Apply: batched procedure against one INSERT ... SELECT"
HEADING_STEER = "## Apply steered: under load, paused, batch time, time outside batches"
COLLECTION = "bench_missing_births"
DB = "birth_bench_apply"
READY = f"{DB}_ready"
INSERT_DB = f"{DB}_insert"
# Our own staging root on the lab VPS (and so our own lease): bench runs never meet other
# users of the lab, and the lab's reset leaves the shared staging root alone.
STAGING_ROOT = f"/opt/incomex/docs/mcp-writes-{DB}"
STAGE2_ARGS = ["-e", f"lab_db_name={DB}", "-e", f"birth_stage2_staging_root={STAGING_ROOT}"]
# The lab's operators (playbooks/lab.yml makes their keys): the dry-run, the T2 review and
# the owner's permit are signed acts, each by its own role's key.
OPERATORS = LAB / "operators"
TARGET_RATIO = 0.5
TARGET_BATCH_MS = 2000.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(argv: list[str], stdin: str | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=REPO, env=env(), input=stdin, text=True, capture_output=True, check=False
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"failed: {shlex.join(argv)}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def playbook(*args: str) -> float:
    return run([str(VENV / "ansible-playbook"), *args])[0]


def psql(db: str, sql: str, *args: str) -> str:
    argv = ["docker", "exec", "-i", CONTAINER, "psql", "-X", "-q", "-A", "-t", "-F", "\t"]
    argv += ["-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", db, *args]
    return run(argv, stdin=sql)[1]


def copy_db(source: str, target: str) -> None:
    psql(
        "postgres",
        f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE);\n'
        f'CREATE DATABASE "{target}" TEMPLATE "{source}" STRATEGY FILE_COPY;\n',
    )


def drop_db(name: str) -> None:
    psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);\n')


def warm(db: str) -> None:
    """Read both tables once so neither measurement starts from a cold page cache."""
    psql(db, f"SELECT count(*) FROM {COLLECTION}; SELECT count(*) FROM birth_registry;")


def neighbour_sessions() -> int:
    """Client sessions in the container's other databases (the lab's other users)."""
    out = psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        f" AND datname NOT LIKE '{DB}%' AND datname <> 'postgres';",
    )
    return int(out.strip())


def run_id(tag: str) -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-bench-" + tag


def summary(rid: str) -> dict:
    return json.loads((REPO / "reports" / rid / "summary.json").read_text())


def key(name: str) -> list[str]:
    """Sign as this lab operator (alice dry-runs, bob reviews, carol permits)."""
    return ["-e", f"birth_stage2_signing_key={OPERATORS / name / 'id_ed25519'}"]


def lab_database() -> None:
    """Our lab database from the default fixture, as playbooks/lab.yml's fixture and reset
    steps make one (lab/bin/labdb: the fixture into our own pristine template, our database a
    copy of it; our staging root on the VPS created, and cleared of what an interrupted bench
    left there, a lease). Not through the playbook itself: its `up` also rewrites the shared
    lab's sshd configuration from this checkout's paths (and restarts that sshd when they
    differ, as they do from a git worktree), which the lab's other users would meet."""
    labdb = str(REPO / "lab" / "bin" / "labdb")
    fixture = str(REPO / "lab" / "fixture" / "birth_lab.sql")
    digest = run([labdb, "digest", fixture])[1].strip()
    marker = f"birth-lab fixture={Path(fixture).name} sha256={digest} scale=1"
    run([labdb, "load", CONTAINER, DB, f"{DB}_pristine", fixture, "1", marker])
    # The VPS is the lab's sshd on this machine: its staging root is a local directory.
    root = Path(STAGING_ROOT)
    root.mkdir(mode=0o750, parents=True, exist_ok=True)
    for left in [*root.glob("birth-stage2-*"), *root.glob(".birth-stage2*")]:
        if left.is_dir() and not left.is_symlink():
            shutil.rmtree(left)
        else:
            left.unlink()


def build_ready(rows: int) -> dict:
    log(f"[apply bench] {DB}: default fixture + {rows:,} rows without births ...")
    lab_database()
    psql(DB, FIXTURE.read_text(), "-v", f"bench_rows={rows}")
    births = int(psql(DB, "SELECT count(*) FROM birth_registry;").strip())
    log("[apply bench] full Stage 2 run (alice), review (bob), permit (carol) ...")
    rid = run_id("dryrun")
    full = playbook(
        "stage2.yml", *STAGE2_ARGS, *key("alice"), "-e", f"birth_stage2_run_id={rid}",
        "-e", "birth_stage2_operator=bench-author",
    )  # fmt: skip
    s = summary(rid)
    planned = s["plan"] or {}
    if planned.get(COLLECTION) != rows:
        sys.exit(f"the plan holds {planned.get(COLLECTION)} births for {COLLECTION}, not {rows}")
    sha = s["evidence"]["sha256"]
    playbook(
        "playbooks/review.yml", *STAGE2_ARGS, *key("bob"),
        "-e", "birth_stage2_reviewer=bench-reviewer", "-e", "birth_stage2_review_verdict=approved",
        "-e", f"birth_stage2_review_evidence={sha}", "-e", f"birth_stage2_review_run={rid}",
    )  # fmt: skip
    playbook(
        "playbooks/permit.yml", *STAGE2_ARGS, *key("carol"),
        "-e", "birth_stage2_permit_action=open", "-e", "birth_stage2_permit_issuer=bench-owner",
        "-e", f"birth_stage2_permit_evidence={sha}", "-e", "birth_stage2_permit_expires_in=6h",
    )  # fmt: skip
    gate = gate_cost(rows)
    log(f"[apply bench] the gate's codes hash: {gate}")
    copy_db(DB, READY)
    return {"confirm": rid, "births": births, "plan": planned, "full_run_s": full, "gate": gate}


CODES_HASH = (
    "SELECT encode(sha256(convert_to(coalesce(string_agg(c.collection_name || E'\\t'"
    " || c.entity_code || E'\\n', '' ORDER BY c.collection_name, c.entity_code), ''), 'UTF8')),"
    " 'hex') FROM {source} c"
)


def timed_ms(db: str, statement: str, times: int = 3) -> float:
    """The median time of a read-only statement, timed in the database."""
    out = psql(
        db,
        "\n".join(
            f"SELECT clock_timestamp() AS t0 \\gset\n{statement};\n"
            "SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000;"
            for _ in range(times)
        ),
    )
    ms = [float(line) for line in out.splitlines()[1::2]]
    return med(ms)


def gate_cost(rows: int) -> dict:
    """What the gate's codes hash costs: the hash of every code of the plan, sorted (the
    apply procedure's `gate codes` statement, which each CALL runs once, in its first
    transaction, the statement that also copies the collection's codes into the session's own
    table; its batches no longer run it), on the ready state's plan; and the same hash over
    synthetic codes of the bench's size and of 1,000,000 (what it costs on a plan of that
    size, without building one). Not timed here: the copy, which the CALL's first
    transaction adds (batched_apply measures that transaction whole)."""
    real = CODES_HASH.format(
        source=f"(SELECT * FROM public.birth_stage2_plan_codes WHERE plan_code = '{PLAN}')"
    )
    codes = int(psql(DB, "SELECT count(*) FROM public.birth_stage2_plan_codes;").strip())

    def synth(n: int) -> str:
        return CODES_HASH.format(
            source=f"(SELECT '{COLLECTION}'::text AS collection_name, '{COLLECTION}::' || g"
            f" AS entity_code FROM generate_series(1, {n}) g)"
        )

    synth_ms = timed_ms(DB, synth(rows))
    return {
        "codes": codes,
        "real_ms": timed_ms(DB, real),
        "synth_ms": synth_ms,
        "synth_1m_ms": synth_ms if rows == 1_000_000 else timed_ms(DB, synth(1_000_000)),
    }


def single_insert() -> tuple[int, float]:
    """One INSERT ... SELECT of the missing births on a copy of the ready state."""
    copy_db(READY, INSERT_DB)
    warm(INSERT_DB)
    out = psql(
        INSERT_DB,
        f"""SELECT clock_timestamp() AS t0 \\gset
INSERT INTO birth_registry (collection_name, entity_code, birth_source)
SELECT DISTINCT '{COLLECTION}', s.code, 'backfill'
  FROM (SELECT '{COLLECTION}' || '::' || (to_jsonb(t) ->> 'id') AS code FROM {COLLECTION} t) s
 WHERE s.code IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM birth_registry b
                    WHERE b.collection_name = '{COLLECTION}' AND b.entity_code = s.code)
ON CONFLICT (collection_name, entity_code) DO NOTHING;
SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz),
       (SELECT count(*) FROM birth_registry WHERE collection_name = '{COLLECTION}');
""",
    )
    seconds, births = out.strip().splitlines()[-1].split("\t")
    drop_db(INSERT_DB)
    return int(births), float(seconds)


APPLY_TABLES = "birth_stage2_apply_batches"
CONTROL_TABLE = "birth_stage2_apply_control"
LEDGER = "birth_backfill_ledger"
PLAN = "QT-001"
PROGRESS_TABLE = "birth_stage2_apply_progress"
APPLY_PROC = "sp_dot_birth_qt001_apply"
CROSS_LAYER = "v_birth_stage2_cross_layer_guard"
# How the play ends on a red safety guard (roles/birth_stage2/tasks/read_guards.yml).
GUARD_RED = "Safety guard red on"


def control_sql(state: str, reason: str) -> str:
    """The statement playbooks/apply_control.yml runs (its role's tasks/apply_control.yml)."""
    return f"""INSERT INTO public.{CONTROL_TABLE} AS c (plan_code, state, reason, set_by)
VALUES ('{PLAN}', '{state}', '{reason}', 'bench-operator')
ON CONFLICT (plan_code) DO UPDATE
   SET state = EXCLUDED.state, reason = EXCLUDED.reason, set_by = EXCLUDED.set_by, set_at = now()
 WHERE c.state IS DISTINCT FROM EXCLUDED.state;
"""


# What a control write meets when another write updated the control row after the write's
# REPEATABLE READ snapshot was taken: the write fails and is run again. Until 07f1053 every
# batch whose aim changed updated the control row (its batch_rows), so a pause or resume met
# it 1-2 times per try; the running apply now keeps its throttle and batch_rows in
# birth_stage2_apply_progress, and only operators and an apply's start write the control row.
SERIALIZE = "could not serialize access due to concurrent update"
# playbooks/apply_control.yml takes a write refused that way again itself (up to 5 times,
# 1 s apart), each time printing this.
RETRYING = "FAILED - RETRYING"


def apply_control(state: str, via: str, tries: int) -> dict:
    """Set the control state as an operator would, again while it fails on SERIALIZE (at most
    `tries` times): through the playbook, or its statement in a transaction like the one
    birth_sql wraps it in (REPEATABLE READ, its snapshot taken by a first read). Refusals
    counted: the bench's own reruns and the playbook's own retries (RETRYING) inside them."""
    if via == "sql":
        argv = ["docker", "exec", "-i", CONTAINER, "psql", "-X", "-q", "-A", "-t"]
        argv += ["-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", DB]
        stdin = (
            "BEGIN ISOLATION LEVEL REPEATABLE READ;\n"
            f"SELECT to_regclass('public.{CONTROL_TABLE}') IS NOT NULL;\n"
            + control_sql("pause" if state == "pause" else "run", f"bench {state}")
            + "COMMIT;\n"
        )
    else:
        argv = [
            str(VENV / "ansible-playbook"), "playbooks/apply_control.yml", *STAGE2_ARGS,
            "-e", f"birth_stage2_apply_control={state}",
            "-e", f"birth_stage2_apply_control_reason=bench {state}",
            "-e", "birth_stage2_operator=bench-operator",
        ]  # fmt: skip
        stdin = None
    first = time.time()
    failed = 0
    refused = 0
    while True:
        started = time.perf_counter()
        proc = subprocess.run(
            argv, cwd=REPO, env=env(), input=stdin, text=True, capture_output=True, check=False
        )
        took = time.perf_counter() - started
        retried = proc.stdout.count(RETRYING) if via == "playbook" else 0
        refused += retried
        if retried:
            log(f"[apply bench] {state}: the playbook retried {retried} time(s) itself")
        if proc.returncode == 0:
            return {"first_at": first, "s": took, "failed": failed, "refused": refused}
        failed += 1
        refused += 1
        if SERIALIZE not in proc.stdout + proc.stderr or failed >= tries:
            sys.exit(f"failed ({failed} tries): {shlex.join(argv)}\n{proc.stdout[-3000:]}")
        log(f"[apply bench] {state}: try {failed} refused ({SERIALIZE}); again")


def control_row() -> tuple[str, float]:
    out = psql(
        DB,
        f"SELECT state, extract(epoch FROM set_at) FROM public.{CONTROL_TABLE}"
        f" WHERE plan_code = '{PLAN}';",
    )
    state, at = out.strip().split("\t")
    return state, float(at)


def wait_batches_sql(rid: str, count: int, bound_s: int) -> str:
    """A session that returns once the run has committed `count` batches of the collection
    (or after bound_s seconds), committing each look so it holds no snapshot meanwhile."""
    return f"""DO $wait$
DECLARE
  v_until timestamptz := clock_timestamp() + interval '{bound_s} s';
  v_n bigint := 0;
BEGIN
  LOOP
    IF to_regclass('public.{APPLY_TABLES}') IS NOT NULL THEN
      EXECUTE 'SELECT count(*) FROM public.{APPLY_TABLES}'
              ' WHERE run_id = $1 AND collection_name = $2'
         INTO v_n USING '{rid}', '{COLLECTION}';
    END IF;
    COMMIT;
    EXIT WHEN v_n >= {count} OR clock_timestamp() > v_until;
    PERFORM pg_sleep(0.02);
  END LOOP;
  PERFORM set_config('bench.seen', v_n::text, false);
END
$wait$;
SELECT current_setting('bench.seen');
"""


def load_sql(rid: str, k: int, args: argparse.Namespace) -> str:
    """One session of the competing write load: it waits (at most --load-wait s) for the
    apply's first batch of the collection, then, in transactions of its own, inserts
    --load-rows new rows (their birth trigger births them) and updates --load-rows existing
    rows of its own stripe (ids = k mod sessions: the sessions never wait on each other),
    sleeping --load-sleep-ms between two; it stops by itself at the first of: the
    collection's ledger row no longer planned/applying (the apply is through it),
    --load-seconds, --load-max-rows rows written."""
    n, stripe = args.rows, args.load_sessions
    max_rows = args.load_max_rows // stripe
    return f"""SET application_name = 'bench-load-{k}';
DO $load$
DECLARE
  v_wait_until timestamptz := clock_timestamp() + interval '{args.load_wait} s';
  v_seen boolean := false;
  v_t0 timestamptz;
  v_until timestamptz;
  v_status text;
  v_n bigint;
  v_ins bigint := 0;
  v_upd bigint := 0;
  v_tx bigint := 0;
  v_why text := 'bound time';
BEGIN
  LOOP
    IF to_regclass('public.{APPLY_TABLES}') IS NOT NULL THEN
      EXECUTE 'SELECT EXISTS (SELECT 1 FROM public.{APPLY_TABLES}'
              ' WHERE run_id = $1 AND collection_name = $2)'
         INTO v_seen USING '{rid}', '{COLLECTION}';
    END IF;
    COMMIT;
    EXIT WHEN v_seen OR clock_timestamp() > v_wait_until;
    PERFORM pg_sleep(0.02);
  END LOOP;
  v_t0 := clock_timestamp();
  v_until := v_t0 + interval '{args.load_seconds} s';
  IF NOT v_seen THEN
    v_why := 'no batch seen';
  END IF;
  WHILE v_seen AND clock_timestamp() < v_until LOOP
    IF v_ins + v_upd >= {max_rows} THEN
      v_why := 'bound rows';
      EXIT;
    END IF;
    SELECT l.status INTO v_status FROM public.{LEDGER} l
     WHERE l.plan_code = '{PLAN}' AND l.collection_name = '{COLLECTION}';
    IF v_status NOT IN ('planned', 'applying') THEN
      v_why := 'collection ' || v_status;
      EXIT;
    END IF;
    INSERT INTO public.{COLLECTION} (title)
    SELECT 'bench load {k} insert' FROM generate_series(1, {args.load_rows});
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_ins := v_ins + v_n;
    UPDATE public.{COLLECTION} SET title = 'bench load {k} update'
     WHERE id = ANY (ARRAY(SELECT floor(random() * {n // stripe})::bigint * {stripe} + {k + 1}
                             FROM generate_series(1, {args.load_rows})));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_upd := v_upd + v_n;
    COMMIT;
    v_tx := v_tx + 1;
    PERFORM pg_sleep({args.load_sleep_ms / 1000.0});
  END LOOP;
  PERFORM set_config('bench.load', concat_ws(E'\t', v_ins, v_upd, v_tx, extract(epoch FROM v_t0),
                                              extract(epoch FROM clock_timestamp()), v_why), false);
END
$load$;
SELECT current_setting('bench.load');
"""


def psql_background(db: str, sql: str) -> subprocess.Popen:
    argv = ["docker", "exec", "-i", CONTAINER, "psql", "-X", "-q", "-A", "-t", "-F", "\t"]
    argv += ["-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", db]
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    proc.stdin.write(sql)
    proc.stdin.close()
    return proc


def finish(proc: subprocess.Popen, timeout: float, what: str) -> str:
    try:
        out = proc.stdout.read() if proc.wait(timeout=timeout) == 0 else None
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        sys.exit(f"{what} did not end within {timeout:.0f} s: killed")
    if out is None:
        sys.exit(f"{what} failed:\n{proc.stderr.read()[-2000:]}")
    return out


def under_load(args: argparse.Namespace):
    """The competing write load, started with the apply; returns what it wrote."""

    def during(rid: str) -> dict:
        sessions = [psql_background(DB, load_sql(rid, k, args)) for k in range(args.load_sessions)]
        bound = args.load_wait + args.load_seconds + 120
        per = []
        for k, proc in enumerate(sessions):
            ins, upd, tx, t0, t1, why = finish(proc, bound, f"load session {k}").strip().split("\t")
            per.append((int(ins), int(upd), int(tx), float(t0), float(t1), why))
        return {
            "load": {
                "inserted": sum(p[0] for p in per),
                "updated": sum(p[1] for p in per),
                "transactions": sum(p[2] for p in per),
                "from": min(p[3] for p in per),
                "to": max(p[4] for p in per),
                "stopped": sorted({p[5] for p in per}),
            }
        }

    return during


def with_pause(args: argparse.Namespace):
    """Pause the running apply once it has committed --pause-after batches of the collection,
    hold --pause-hold s, resume (through playbooks/apply_control.yml); returns the control
    times as the database recorded them (set_at) and the commands' own wall times."""

    def during(rid: str) -> dict:
        seen = int(psql(DB, wait_batches_sql(rid, args.pause_after, args.load_wait)).strip())
        if seen < args.pause_after:
            sys.exit(f"the apply committed {seen} batch(es) of {COLLECTION} in {args.load_wait} s")
        pause = apply_control("pause", args.pause_via, args.control_tries)
        state, paused_at = control_row()
        if state != "pause":
            sys.exit(f"the control row is {state} after the pause command")
        time.sleep(args.pause_hold)
        resume = apply_control("resume", "playbook", args.control_tries)
        state, resumed_at = control_row()
        if state != "run":
            sys.exit(f"the control row is {state} after the resume command")
        return {
            "pause": {
                "command_at": pause["first_at"],
                "command_s": pause["s"],
                "refused": pause["refused"],
                "paused_at": paused_at,
                "resumed_at": resumed_at,
                "resume_command_s": resume["s"],
                "resume_refused": resume["refused"],
            }
        }

    return during


def calls_sql(bound_s: int) -> str:
    """A session that samples pg_stat_activity every 20 ms (committing each look, so it sees
    the current state and holds no snapshot) while the apply's CALLs run: each CALL's start
    (query_start) and collection, and the oldest transaction of the CALLs' session it saw.
    It waits at most bound_s for the first CALL and ends 3 s after it last saw one, or when
    no CALL runs and no ledger row of the plan is left to apply. The CALL's text names the
    procedure quoted ("public"."sp_..."(...)), as the role's pg_qualify writes it."""
    return f"""SET application_name = 'bench-calls';
DO $calls$
DECLARE
  v_until timestamptz := clock_timestamp() + interval '{bound_s} s';
  v_last timestamptz;
  v_calls text[] := '{{}}';
  v_key text;
  v_age numeric := 0;
  v_age_of text := '';
  v_done boolean := false;
  r record;
BEGIN
  LOOP
    SELECT a.query_start, clock_timestamp() - a.xact_start AS age,
           substring(a.query FROM $re$CALL[[:space:]]+[^(]+[(][[:space:]]*'([^']*)'$re$) AS coll
      INTO r
      FROM pg_stat_activity a
     WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.state = 'active'
       AND a.query ILIKE '%CALL %{APPLY_PROC}%(%'
     ORDER BY a.query_start LIMIT 1;
    IF FOUND THEN
      v_last := clock_timestamp();
      v_key := r.coll || E'\t' || extract(epoch FROM r.query_start);
      IF NOT v_key = ANY (v_calls) THEN
        v_calls := v_calls || v_key;
      END IF;
      IF extract(epoch FROM r.age) > v_age THEN
        v_age := extract(epoch FROM r.age);
        v_age_of := r.coll;
      END IF;
    END IF;
    IF NOT FOUND THEN
      -- No CALL running: done once no ledger row of the plan is left to apply.
      SELECT NOT EXISTS (SELECT 1 FROM public.{LEDGER} l WHERE l.plan_code = '{PLAN}'
                                                     AND l.status IN ('planned', 'applying'))
        INTO v_done;
    END IF;
    COMMIT;
    EXIT WHEN clock_timestamp() > v_until OR v_done
           OR (v_last IS NOT NULL AND clock_timestamp() - v_last > interval '3 s');
    PERFORM pg_sleep(0.02);
  END LOOP;
  PERFORM set_config('bench.calls', concat_ws(E'\n', v_age || E'\t' || v_age_of,
                                              array_to_string(v_calls, E'\n')), false);
END
$calls$;
SELECT current_setting('bench.calls');
"""


def read_calls(out: str) -> dict:
    lines = [line for line in out.strip().splitlines() if line.strip()]
    age, age_of = lines[0].split("\t")
    calls = []
    for line in lines[1:]:
        coll, at = line.split("\t")
        calls.append({"collection": coll, "started": float(at)})
    return {"oldest_xact_s": float(age), "oldest_xact_of": age_of, "calls": calls}


def cross_layer_counts() -> dict:
    """The final cross-layer guard's counts_match_snapshot row, as the play read it (the
    load has stopped by then, and nothing else writes this database)."""
    out = psql(
        DB,
        f"SELECT ok, detail FROM public.{CROSS_LAYER} WHERE check_name = 'counts_match_snapshot';",
    )
    ok, detail = out.strip().split("\t", 1)
    m = re.search(r"the application's births since baseline (-?\d+)", detail)
    return {"ok": ok == "t", "detail": detail, "app_births": int(m.group(1)) if m else None}


def read_batches(rid: str) -> list[dict]:
    out = psql(
        DB,
        f"""SELECT collection_name, batch_no, pass, rows_read, births, duration_ms,
       extract(epoch FROM started_at), extract(epoch FROM finished_at), coalesce(target_rows, 0),
       attempts, throttled_ms, coalesce(throttle_reason, ''), outcome
  FROM public.{APPLY_TABLES} WHERE run_id = '{rid}' ORDER BY started_at, id;
""",
    )
    rows = []
    for line in out.splitlines():
        if not line.strip():
            continue
        f = line.split("\t")
        rows.append(
            {
                "collection": f[0],
                "batch_no": int(f[1]),
                "pass": int(f[2]),
                "rows_read": int(f[3]),
                "births": int(f[4]),
                "ms": float(f[5]),
                "started": float(f[6]),
                "finished": float(f[7]),
                "target_rows": int(f[8]),
                "attempts": int(f[9]),
                "throttled_ms": float(f[10]),
                "throttle_reason": f[11],
                "outcome": f[12],
            }
        )
    return rows


def batched_apply(confirm: str, args: argparse.Namespace, target_ms: int, during=None) -> dict:
    """The apply playbook on a fresh copy of the ready state (in the background while
    `during` runs beside it, if given); the batches table read back."""
    copy_db(READY, DB)
    warm(DB)
    rid = run_id("apply")
    argv = [
        str(VENV / "ansible-playbook"), "stage2.yml", "--tags", "apply", *STAGE2_ARGS,
        "-e", f"birth_stage2_run_id={rid}", "-e", f"birth_stage2_apply_confirm={confirm}",
        "-e", f"birth_stage2_apply_batch_size={args.batch_size}",
        "-e", f"birth_stage2_apply_batch_target_ms={target_ms}",
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env(), stdout=out, stderr=subprocess.STDOUT, text=True
        )
        sampler = psql_background(DB, calls_sql(args.load_wait))
        try:
            extra = during(rid) if during else {}
        except BaseException:
            proc.terminate()  # ours; the apply's async job ends with the bench database
            proc.wait()
            raise
        rc = proc.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        text = out.read()
    red = None
    if rc != 0:
        # Under the load only: a red safety guard after every batch committed is a figure of
        # the run (the collection's ledger row is checked below), any other failure is not.
        if during is None or GUARD_RED not in text:
            sys.exit(f"failed: {shlex.join(argv)}\n{text[-4000:]}")
        red = re.search(re.escape(GUARD_RED) + r"[^\n]*(\n[^\n]+){0,3}", text).group(0)
    calls = read_calls(finish(sampler, args.load_wait + 60, "the CALL sampler"))
    status, applied = psql(
        DB,
        f"SELECT status, applied_delta FROM public.{LEDGER}"
        f" WHERE plan_code = '{PLAN}' AND collection_name = '{COLLECTION}';",
    ).split()
    if status != "done" or int(applied) != args.rows:
        sys.exit(f"apply did not finish {COLLECTION}: {status}, {applied} of {args.rows}")
    batches = read_batches(rid)
    return {
        "rid": rid,
        "wall": wall,
        "target_ms": target_ms,
        "batches": batches,
        "red": red,
        "guard": cross_layer_counts(),
        **calls,
        **extra,
    }


def pct(xs: list[float], q: float) -> float:
    """The q-quantile with linear interpolation (as percentile_cont)."""
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def first_transactions(run: dict) -> list[dict]:
    """Per CALL the sampler saw that then ran batches: its start (query_start) to its first
    batch's start (the codes hash and copy, the drift check: before the batch's work) and to
    that batch's end (finished_at, just before its COMMIT): the CALL's first transaction,
    which holds all of it (the procedure COMMITs first after that batch, unless paused or
    throttled before it)."""
    out = []
    for call in run.get("calls", []):
        b = [
            x
            for x in run["batches"]
            if x["collection"] == call["collection"] and x["started"] >= call["started"]
        ]
        if not b:
            continue
        first = min(b, key=lambda x: x["started"])
        out.append(
            {
                "collection": call["collection"],
                "pre_ms": (first["started"] - call["started"]) * 1000,
                "txn_ms": (first["finished"] - call["started"]) * 1000,
                "throttled_ms": first["throttled_ms"],
            }
        )
    return out


def collection_figures(run: dict) -> dict:
    """The collection's throughput and its batches, as the existing section reports them."""
    b = sorted(
        (x for x in run["batches"] if x["collection"] == COLLECTION), key=lambda x: x["batch_no"]
    )
    span = max(x["finished"] for x in b) - min(x["started"] for x in b)
    births = sum(x["births"] for x in b)
    # The last batch has no next: its own work stands in (its COMMIT left out).
    to_next = [(nxt["started"] - cur["started"]) * 1000 for cur, nxt in itertools.pairwise(b)]
    to_next.append(b[-1]["ms"])
    ms = [x["ms"] for x in b]
    longest = max(b, key=lambda x: x["ms"])
    return {
        "batches": len(b),
        "births": births,
        "span": span,
        "rate": births / span,
        "longest_ms": max(ms),
        "p95_ms": pct(ms, 0.95),
        "longest_to_next_ms": max(to_next),
        # The longest batch: the collection's last? What it read and birthed.
        "longest_last": longest is b[-1],
        "longest_read": longest["rows_read"],
        "longest_births": longest["births"],
        "passes": max(x["pass"] for x in b),
        "throttled_s": sum(x["throttled_ms"] for x in b) / 1000,
        "throttled_batches": sum(1 for x in b if x["throttled_ms"] > 0),
        "reasons": sorted({x["throttle_reason"] for x in b if x["throttle_reason"]}),
        "retried": sum(1 for x in b if x["attempts"] > 1),
        "rows_read": sum(x["rows_read"] for x in b),
        # The collection's CALL: its start to its first batch, and its first transaction.
        "first": next((f for f in first_transactions(run) if f["collection"] == COLLECTION), None),
    }


def steady_batches(run: dict, warmup: int) -> list[float]:
    """duration_ms of the batches that count for the target: per collection, without its
    first `warmup` batches (the size still ramping from --batch-size) and its last (the
    collection's remainder)."""
    by: dict[str, list[dict]] = {}
    for x in run["batches"]:
        by.setdefault(x["collection"], []).append(x)
    kept = []
    for rows in by.values():
        rows.sort(key=lambda x: x["batch_no"])
        kept += [x["ms"] for x in rows[warmup:-1] if x["outcome"] == "ok"]
    return kept


def overhead(run: dict) -> dict:
    """The play's wall time against the time spent inside batches."""
    inside = sum(x["ms"] for x in run["batches"]) / 1000
    gaps = 0.0
    by: dict[str, list[dict]] = {}
    for x in run["batches"]:
        by.setdefault(x["collection"], []).append(x)
    for rows in by.values():
        span = max(x["finished"] for x in rows) - min(x["started"] for x in rows)
        gaps += span - sum(x["ms"] for x in rows) / 1000
    firsts = first_transactions(run)
    return {
        "wall": run["wall"],
        "inside": inside,
        "outside": run["wall"] - inside,
        "between": gaps,
        # Each CALL's start to its first batch's start (none seen: None).
        "pre": sum(f["pre_ms"] for f in firsts) / 1000 if firsts else None,
        "calls": len(firsts),
        "batches": len(run["batches"]),
        "collections": len(by),
    }


def pause_figures(run: dict) -> dict:
    """From the batches: the last batch committed before the pause held (the last to end
    before resume), how long after the pause was written it committed, that no batch started
    between it and resume, and how soon after resume the next began."""
    p = run["pause"]
    paused, resumed = p["paused_at"], p["resumed_at"]
    b = sorted(run["batches"], key=lambda x: x["started"])
    before = [x for x in b if x["finished"] < resumed]
    after = [x for x in b if x["started"] >= resumed]
    if not before or not after:
        return {"held": False}
    last = max(before, key=lambda x: x["finished"])
    in_gap = [x for x in b if last["finished"] < x["started"] < resumed]
    in_flight = [x for x in b if x["started"] <= paused < x["finished"]]
    return {
        "held": True,
        "to_last_commit_ms": (last["finished"] - paused) * 1000,
        "command_to_last_commit_s": last["finished"] - p["command_at"],
        "command_s": p["command_s"],
        "refused": p["refused"],
        "resume_refused": p["resume_refused"],
        "started_after_pause": sum(1 for x in before if x["started"] > paused),
        "in_flight_ms": in_flight[0]["ms"] if in_flight else 0.0,
        "started_while_held": len(in_gap),
        "held_s": resumed - last["finished"],
        "resume_to_next_ms": (min(x["started"] for x in after) - resumed) * 1000,
        "collection": last["collection"],
        "last_batch_no": last["batch_no"],
    }


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / 2 if len(xs) > 1 else 0.0


def fmt(xs: list[float], digits: int = 2) -> str:
    return f"{med(xs):,.{digits}f} ± {spread(xs):,.{digits}f}"


def machine() -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{platform.node()}, {os.cpu_count()} cores, {cpu}, Linux {platform.release()}"


def per(xs: list[float], digits: int = 0) -> str:
    """Each repetition's value, in order."""
    return "[" + ", ".join(f"{x:,.{digits}f}" for x in xs) + "]"


def steering(args: argparse.Namespace, target_ms: int) -> str:
    if target_ms == 0:
        return f"batches of {args.batch_size:,}"
    return f"first batch {args.batch_size:,} rows, then each aiming at {target_ms} ms"


def markdown(args: argparse.Namespace, ready: dict, inserts: list, reps: list) -> str:
    applies = [collection_figures(r["base"]) for r in reps]
    insert_rate = [b / s for b, s in inserts]
    apply_rate = [a["rate"] for a in applies]
    ratio = med(apply_rate) / med(insert_rate)
    worst_batch = max(a["longest_to_next_ms"] for a in applies)
    ratio_ok = "met" if ratio >= TARGET_RATIO else "missed"
    batch_ok = "met" if worst_batch <= TARGET_BATCH_MS else "missed"
    now = args.date
    command = command_line(args)
    gate = ready["gate"]
    firsts = [a["first"] for a in applies if a["first"]]
    first_rows, first_note = [], "the CALL sampler saw no CALL of the collection"
    if firsts:
        txn = [f["txn_ms"] for f in firsts]
        pre = [f["pre_ms"] for f in firsts]
        over = "over" if max(txn) > TARGET_BATCH_MS else "within"
        longer = max(txn) > worst_batch
        first_rows = [
            f"| the collection's CALL: its start to its first batch's work, the codes hash and"
            f" copy and the drift check (ms) | {fmt(pre, 1)} {per(pre)} | |",
            f"| the CALL's first transaction: its start to its first batch's end (ms) |"
            f" {fmt(txn, 1)} {per(txn)} | {over} {TARGET_BATCH_MS:.0f} |",
        ]
        first_note = (
            f"The CALL's first transaction holds that hash, the copy, the drift check (the"
            " collection's live missing codes against the copy, one read of the whole table)"
            f" and the first batch: {fmt(txn, 0)} ms, of which {fmt(pre, 0)} ms before the"
            " batch's work began"
            + (
                f", longer than any batch transaction after it ({worst_batch:,.0f} ms at most):"
                " the one the apply holds longest is this, not a batch"
                if longer
                else f", no longer than the batches after it ({worst_batch:,.0f} ms at most)"
            )
            + " (figures from the CALL's `query_start`, sampled every 20 ms, and its first"
            " batch's record; the oldest transaction the sampler saw in the apply's session:"
            f" {fmt([r['base']['oldest_xact_s'] * 1000 for r in reps], 0)} ms)."
        )
    return "\n".join(
        [
            HEADING,
            "",
            f"- Date: {now}",
            f"- Machine: {machine()}",
            f"- Command: `{command.strip()}`, measuring the role as of commit"
            f" {getattr(args, 'code', '?').strip()}",
            "- Data: the default lab fixture plus `bench/fixtures/missing_1m.sql`:"
            f" `{COLLECTION}`, {args.rows:,} rows without births (synthetic codes);"
            f" {ready['births']:,} births before the apply, whose plan is"
            f" {sum(ready['plan'].values()):,} births in"
            f" {len(ready['plan'])} collections. Every repetition starts from a copy of the same"
            " reviewed, permitted state; medians ± half the range over"
            f" {len(applies)} repetition(s).",
            "",
            "| measurement | births | seconds | births/s |",
            "| --- | ---: | ---: | ---: |",
            f"| one `INSERT ... SELECT` (COMMIT included) | {inserts[0][0]:,}"
            f" | {fmt([s for _, s in inserts])} | {fmt(insert_rate, 0)} |",
            f"| apply procedure, {steering(args, args.target_ms)} (first batch start to last"
            f" batch end) | {applies[0]['births']:,} | {fmt([a['span'] for a in applies])}"
            f" | {fmt(apply_rate, 0)} |",
            f"| `stage2.yml --tags apply` wall time (preflight, gates, deploy, all"
            f" {len(ready['plan'])} collections, rerun dry-run, guards, summary) | |"
            f" {fmt([r['base']['wall'] for r in reps])} | |",
            "",
            "| batch transactions | value | target |",
            "| --- | ---: | --- |",
            f"| apply throughput / single INSERT | {ratio:.2f} | ≥ {TARGET_RATIO} ({ratio_ok}) |",
            f"| batches of `{COLLECTION}` | {fmt([a['batches'] for a in applies], 0)} | |",
            f"| longest batch, work (ms) | {fmt([a['longest_ms'] for a in applies], 1)} | |",
            f"| 95th percentile batch, work (ms) | {fmt([a['p95_ms'] for a in applies], 1)} | |",
            "| longest batch, start to next batch's start, COMMIT included (the last batch:"
            f" its work) (ms) | {fmt([a['longest_to_next_ms'] for a in applies], 1)}"
            f" | ≤ {TARGET_BATCH_MS:.0f} ({batch_ok}) |",
            *first_rows,
            "",
            "Each batch reads one range of the table's pages (a TID range scan) and inserts the",
            "codes that have no birth, in its own transaction with its ledger and batch rows; the",
            "table is walked once, never rescanned from its start. The single INSERT holds one",
            f"transaction over all {args.rows:,} births. Each batch re-checks the gate (permit,"
            " dry-run record, review) but no longer hashes the plan's codes: each CALL hashes"
            " them once, in its first transaction, in the statement that copies the"
            " collection's codes into its session's own table, and its batches birth only from"
            f" that copy. That hash alone took {gate['real_ms']:,.0f} ms at this plan's"
            f" {gate['codes']:,} codes (median of 3, timed apart from the apply). " + first_note,
            "",
        ]
    )


def markdown_steer(
    args: argparse.Namespace, ready: dict, reps: list, loadavg: list, others_seen: list
) -> str:
    """The steered apply's own section: under load, paused, batch time, time outside."""
    now = args.date
    command = command_line(args)
    n = len(reps)
    base = [collection_figures(r["base"]) for r in reps]
    load = [collection_figures(r["load"]) for r in reps]
    lw = [r["load"]["load"] for r in reps]
    cover = []
    for r, f in zip(reps, load, strict=True):
        b = [x for x in r["load"]["batches"] if x["collection"] == COLLECTION]
        lo, hi = min(x["started"] for x in b), max(x["finished"] for x in b)
        w = r["load"]["load"]
        cover.append(max(0.0, min(hi, w["to"]) - max(lo, w["from"])) / f["span"] * 100)
    ins_rate = [w["inserted"] / max(w["to"] - w["from"], 1e-9) for w in lw]
    upd_rate = [w["updated"] / max(w["to"] - w["from"], 1e-9) for w in lw]
    stopped = sorted({why for w in lw for why in w["stopped"]})
    reasons = sorted({why for f in load for why in f["reasons"]})
    reds = sum(1 for r in reps if r["load"]["red"])
    red_line = " ".join(next((r["load"]["red"] for r in reps if r["load"]["red"]), "").split())
    if not reds:
        ended = f"green in {n} of {n} repetition(s)"
    else:
        ended = (
            f"green in {n - reds} and red in {reds} of {n} repetition(s), each red after every"
            f" batch had committed and the collection was done (`{red_line}`)"
        )
    guards = [r["load"].get("guard") for r in reps]
    guard_note = ""
    if all(guards):
        app = [g["app_births"] for g in guards]
        ins = [w["inserted"] for w in lw]
        green = sum(1 for g in guards if g["ok"])
        guard_note = (
            " Its final cross-layer guard (`counts_match_snapshot`, which judges the backfill's"
            " births, `birth_source = 'backfill'`, against the baseline plus what the plan"
            f" applied) was green in {green} of {n}, and reported {per(app)} births by the"
            " application since the baseline against the load's"
            f" {per(ins)} inserted rows ("
            + (
                "the same: each inserted row's birth by the live trigger, counted and not judged"
                if app == ins
                else "NOT the same"
            )
            + ")."
        )
    rate_ratio = med([f["rate"] for f in load]) / med([f["rate"] for f in base])
    last_long = sum(1 for f in load if f.get("longest_last"))
    long_ratio = med([f["longest_ms"] for f in load]) / med([f["longest_ms"] for f in base])

    def row(label: str, fs: list[dict]) -> str:
        return (
            f"| {label} | {fmt([f['rate'] for f in fs], 0)} {per([f['rate'] for f in fs])}"
            f" | {fmt([f['span'] for f in fs])} | {fmt([f['batches'] for f in fs], 0)}"
            f" | {fmt([f['longest_ms'] for f in fs], 1)}"
            f" | {fmt([f['longest_to_next_ms'] for f in fs], 1)}"
            f" | {fmt([f['throttled_s'] for f in fs])} | {max(f['retried'] for f in fs)}"
            f" | {max(f['passes'] for f in fs)} |"
        )

    pauses = [pause_figures(r["paused"]) for r in reps]
    held = [p for p in pauses if p["held"]]
    missed = n - len(held)
    starts_held = [p["started_while_held"] for p in held]

    targets = [(args.target_ms, ("base", "paused")), (args.other_target_ms, ("other",))]
    gate = ready["gate"]
    others = [x for r in reps for x in r["base"]["batches"] if x["collection"] != COLLECTION]
    small = [x["ms"] for x in others]
    small_rows = max(x["rows_read"] for x in others)
    size_note = []
    if args.rows < 1_000_000:
        size_note = [
            f"- Size: {args.rows:,} missing births, not the default 1,000,000. Each CALL hashes"
            " every code of the plan once (its batches do not): the same statement over"
            f" 1,000,000 synthetic codes took {gate['synth_1m_ms']:,.0f} ms"
            f" ({gate['synth_ms']:,.0f} ms over {args.rows:,}, against"
            f" {gate['real_ms']:,.0f} ms on this plan's real {gate['codes']:,})."
        ]
    over = [overhead(r["base"]) for r in reps]
    pre_rows = []
    if all(o["pre"] is not None for o in over):
        pre_rows = [
            "| of which each CALL's start to its first batch's work: the plan's codes hashed"
            " and this collection's copied into the session's table, the drift check"
            f" ({fmt([o['calls'] for o in over], 0)} CALLs; their `query_start`, sampled every"
            f" 20 ms) | {fmt([o['pre'] for o in over])} {per([o['pre'] for o in over], 2)} |",
        ]
    loads = ", ".join(f"{a:.2f}" for a in loadavg)
    neighbours = ", ".join(str(x) for x in others_seen) if others_seen else "not recorded"
    lines = [
        HEADING_STEER,
        "",
        f"- Date: {now}",
        f"- Machine: {machine()}. Shared: other lab tests ran against other databases of the"
        " same PostgreSQL container while the bench ran (client sessions in those databases"
        f" when each apply started: {neighbours}), so every figure below includes their load"
        f" on these {os.cpu_count()} cores (1-minute load average before each apply:"
        f" {min(loadavg):.2f} to {max(loadavg):.2f}; all of them: {loads}).",
        f"- Command: `{command.strip()}`, measuring the role as of commit"
        f" {getattr(args, 'code', '?').strip()}",
        f"- Data: as in the section above ({args.rows:,} missing births in `{COLLECTION}`, the"
        " report's 137 in 5 more collections). Every apply is `ansible-playbook stage2.yml"
        " --tags apply` on a fresh copy of the same reviewed, permitted state, first batch"
        f" {args.batch_size:,} rows, `birth_stage2_apply_batch_target_ms={args.target_ms}`"
        " unless said, every other `birth_stage2_apply_*` at the role's default (batch_min 100,"
        " batch_max 100,000, lock waiters 0, oldest transaction 10 min, lag 30 s). Figures are"
        f" medians ± half the range over {n} repetition(s), each repetition's value in"
        " brackets where it matters; all are computed from the batch records"
        f" (`{APPLY_TABLES}`), the control row and the play's wall time.",
        *size_note,
        "",
        "### Under a competing write load",
        "",
        f"| apply of `{COLLECTION}` | births/s | span (s) | batches | longest batch, work (ms)"
        " | longest batch, start to next start (the last: its work) (ms) | throttled (s)"
        " | batches retried | passes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        row("without load", base),
        row("under the load below", load),
        "",
        f"Under load / without: {rate_ratio:.2f} of the throughput; longest batch (work)"
        f" {long_ratio:.2f}x."
        + (
            f" Under load the longest batch was the collection's last in {last_long} of {n}"
            f" repetition(s): it read {per([f['longest_read'] for f in load])} rows and birthed"
            f" {per([f['longest_births'] for f in load])} (the planned codes still unborn"
            f" there), in {per([f['longest_ms'] for f in load])} ms against the"
            f" {args.target_ms} ms target"
            + (
                f" and the {TARGET_BATCH_MS:.0f} ms bound"
                if max(f["longest_ms"] for f in load) > TARGET_BATCH_MS
                else ""
            )
            + "; the batch-time table below leaves every collection's last batch out."
            if last_long
            else ""
        ),
        f"The load: {args.load_sessions} `psql` sessions (`docker exec` into the container, its"
        " local socket: loopback only), each a loop of transactions that insert"
        f" {args.load_rows} rows into `{COLLECTION}` (their births made by its live trigger)"
        f" and update {args.load_rows} random rows of its own stripe of ids (so the sessions"
        f" never wait on each other), {args.load_sleep_ms} ms apart. It starts at the apply's"
        " first batch of the collection and stops by itself at the first of: the collection's"
        f" ledger row done, {args.load_seconds} s, {args.load_max_rows:,} rows written"
        f" (this time: {', '.join(stopped)}). It wrote {fmt(ins_rate, 0)} inserted and"
        f" {fmt(upd_rate, 0)} updated rows/s ({fmt([w['transactions'] for w in lw], 0)}"
        f" transactions in all), over {fmt(cover, 0)} % of the apply's span."
        + (f" Throttle reasons recorded: {'; '.join(reasons)}." if reasons else "")
        + " No row lock is shared: a batch reads the collection without locking rows and"
        " writes only the registry, the ledger and its batch row."
        + f" The play under the load ended {ended}."
        + guard_note,
        "",
        "### Pause",
        "",
        "| pause, set "
        + ("through `playbooks/apply_control.yml`" if args.pause_via == "playbook" else "by")
        + (
            " the playbook's statement run directly, in the same kind of transaction"
            if args.pause_via == "sql"
            else ""
        )
        + f" after {args.pause_after} batches of the collection, resumed through the playbook"
        f" {args.pause_hold} s after | value |",
        "| --- | ---: |",
    ]
    if held:
        lines += [
            "| pause written (control row `set_at`) to the last batch committed before it"
            " held (its `finished_at`), ms; negative: no batch was running when it was written |"
            f" {fmt([p['to_last_commit_ms'] for p in held], 1)}"
            f" {per([p['to_last_commit_ms'] for p in held], 1)} |",
            "| repetitions where a batch was running when the pause was written |"
            f" {sum(1 for p in held if p['in_flight_ms'])} of {len(held)} |",
            "| work of the batch in flight when the pause was written (0: none), ms |"
            f" {per([p['in_flight_ms'] for p in held], 1)} |",
            "| batches that started after the pause was written and before it held |"
            f" {per([p['started_after_pause'] for p in held])} |",
            "| batches started between that last batch and resume |"
            f" {per(starts_held)} ({'none' if not any(starts_held) else 'SOME'}) |",
            "| held: last batch committed to resume written, s |"
            f" {fmt([p['held_s'] for p in held])} |",
            "| resume written to the next batch's start, ms |"
            f" {fmt([p['resume_to_next_ms'] for p in held], 1)} |",
            f"| the accepted pause command's wall time ({args.pause_via}), s |"
            f" {fmt([p['command_s'] for p in held])} |",
            "| the first pause command's start to the last batch committed, s |"
            f" {fmt([p['command_to_last_commit_s'] for p in held])} |",
        ]
    refused = [r["paused"]["pause"]["refused"] for r in reps]
    resume_refused = [r["paused"]["pause"]["resume_refused"] for r in reps]
    any_refused = any(refused) or any(resume_refused)
    how = (
        "each rerun at once by the bench, plus the playbook's own retries 1 s apart"
        if args.pause_via == "playbook"
        else "the pause's statement rerun at once by the bench, the resume's playbook"
        " retrying itself 1 s apart"
    )
    if any_refused:
        lines += [
            f"| pause writes refused (`{SERIALIZE}`) before one was accepted ({how}) |"
            f" {per(refused)} |",
            f"| resume writes refused the same way | {per(resume_refused)} |",
        ]
    lines += [
        f"| repetitions where the pause never held (the apply was through) | {missed} |",
    ]
    lines += [
        "",
        "By the procedure's code, the apply reads the control row before each batch, so a"
        " pause written while a batch runs holds once that batch commits; while held it"
        " commits every `birth_stage2_apply_throttle_wait_ms` (1 s) and looks again, so resume"
        " takes up to that long. The running apply keeps its own throttle and next batch size"
        f" (`batch_rows`) in `{PROGRESS_TABLE}`, not in the control row, which only operators"
        " and an apply's start write; so a control write (`apply_control.yml` runs it through"
        " birth_sql, in a REPEATABLE READ transaction) has no batch's update to meet."
        + (
            f" Yet {sum(refused)} pause and {sum(resume_refused)} resume write(s) were refused"
            f" with `{SERIALIZE}` ({how}): another write to the control row overtook their"
            " snapshot."
            if any_refused
            else f" None of the {n} pause and {n} resume writes was refused (`{SERIALIZE}`):"
            " each was accepted at its first try"
            + (", the playbook retrying none" if args.pause_via == "playbook" else "")
            + "."
        ),
        "",
        "### Batch time against its target",
        "",
        "| `birth_stage2_apply_batch_target_ms` | batches counted | median (ms) | p95 (ms)"
        " | longest (ms) | median / target | births/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target, keys in targets:
        runs = [r[keys[0]] for r in reps]
        # Per repetition, the batches of every apply without load at this target.
        kept = [[ms for k in keys for ms in steady_batches(r[k], args.warmup)] for r in reps]
        if not all(kept):
            lines.append(f"| {target} | too few batches | | | | | |")
            continue
        meds = [med(k) for k in kept]
        p95s = [pct(k, 0.95) for k in kept]
        lines.append(
            f"| {target} | {fmt([len(k) for k in kept], 0)} | {fmt(meds, 1)} {per(meds)}"
            f" | {fmt(p95s, 1)} {per(p95s)} | {fmt([max(k) for k in kept], 1)}"
            f" | {med(meds) / target:.2f}"
            f" | {fmt([collection_figures(r)['rate'] for r in runs], 0)} |"
        )
    lines += [
        "",
        f"Counted, per repetition: the batches of the applies without load at that target"
        f" (at {args.target_ms} ms the plain one and the paused one, at {args.other_target_ms} ms"
        f" its own), in every collection but its first {args.warmup} (the size still ramping"
        f" from {args.batch_size:,} rows, at most doubling or halving per batch) and its last"
        " (the collection's remainder); births/s is the plain apply's. The work of a batch"
        " (`duration_ms`) runs from before its ledger row lock to its batch row: the gate each"
        " batch re-checks (permit, dry-run record, review; the codes are hashed once per CALL,"
        " before its first batch, and not here) and the batch's read and inserts. The"
        f" one-batch collections of the report (at most {small_rows:,} rows read) took"
        f" {med(small):,.0f} ms each (median), about the fixed part of a batch: "
        + (
            "both targets are well above it."
            if med(small) * 2 <= min(args.target_ms, args.other_target_ms)
            else "a target under it cannot be met (each batch then halves, down to batch_min)."
        ),
        "",
        "### Time outside the batches",
        "",
        f"| `stage2.yml --tags apply`, {args.rows:,} missing births, target"
        f" {args.target_ms} ms, no load | seconds |",
        "| --- | ---: |",
        f"| wall time | {fmt([o['wall'] for o in over])} {per([o['wall'] for o in over], 1)} |",
        "| inside batches: the sum of their `duration_ms`"
        f" ({fmt([o['batches'] for o in over], 0)} batches in {over[0]['collections']}"
        f" collections) | {fmt([o['inside'] for o in over])} |",
        "| **outside batches: wall time minus that sum** |"
        f" **{fmt([o['outside'] for o in over])}** {per([o['outside'] for o in over], 1)} |",
        "| of which between two batches of a collection (control row, progress row and"
        f" signals, COMMIT) | {fmt([o['between'] for o in over])} |",
        *pre_rows,
        "| of which the rest: Ansible and SSH, lease, preflight, gates, deploying the sources,"
        + ("" if pre_rows else " each CALL's codes hash, copy and drift check,")
        + " the progress poll (every `birth_stage2_apply_progress_every`, 5 s, which also"
        " decides when the play sees the end), rerun dry-run, guards, summary |"
        f" {fmt([o['outside'] - o['between'] - (o['pre'] or 0) for o in over])} |",
        "",
    ]
    return "\n".join(lines)


def write_section(heading: str, section: str) -> None:
    """Replace one section in docs/benchmarks.md (or append it); keep the rest."""
    text = OUT.read_text() if OUT.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        lines = [*lines, "", *section.splitlines()]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines = [*lines[:start], *section.splitlines(), "", *lines[end:]]
    OUT.write_text("\n".join(lines).rstrip("\n") + "\n")
    log(f"[apply bench] wrote the section '{heading}' in {OUT}")


def command_line(args: argparse.Namespace) -> str:
    """The command that measures the same again: every setting that is not the default."""
    defaults = vars(parser().parse_args([]))
    out = [".venv/bin/python bench/apply_bench.py"]
    for name, default in defaults.items():
        value = getattr(args, name, default)
        if name in ("markdown", "keep", "render") or value == default:
            continue
        out.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(out)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=5000, help="the first batch's rows")
    ap.add_argument("--target-ms", type=int, default=500, help="0: fixed --batch-size")
    ap.add_argument("--other-target-ms", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=3, help="batches left out per collection")
    ap.add_argument("--load-sessions", type=int, default=3)
    ap.add_argument("--load-rows", type=int, default=10, help="rows inserted, and updated, per tx")
    ap.add_argument("--load-sleep-ms", type=int, default=10)
    ap.add_argument("--load-seconds", type=int, default=600, help="the load's time bound")
    ap.add_argument("--load-max-rows", type=int, default=2_000_000, help="its row bound")
    ap.add_argument("--load-wait", type=int, default=900, help="bound on waiting for the apply")
    ap.add_argument("--pause-after", type=int, default=2, help="batches before the pause")
    ap.add_argument("--pause-hold", type=float, default=5.0)
    ap.add_argument(
        "--pause-via", choices=("playbook", "sql"), default="sql",
        help="sql: the playbook's statement in its kind of transaction, without Ansible's seconds"
        " of start-up (the pause lands inside the collection's few seconds of batches)",
    )  # fmt: skip
    ap.add_argument("--control-tries", type=int, default=20, help="per pause or resume")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--time-box", type=int, default=0,
        help="seconds: start a repetition only while the time so far plus the longest"
        " repetition so far fits (0: no bound; the first always runs)",
    )  # fmt: skip
    ap.add_argument("--markdown", action="store_true", help="print the section, write nothing")
    ap.add_argument("--keep", action="store_true", help="keep the bench databases")
    ap.add_argument("--render", metavar="JSON", help="write the sections from a saved run")
    return ap


def main() -> None:
    args = parser().parse_args()
    args.argv = sys.argv[1:]

    if args.render:
        saved = json.loads(Path(args.render).read_text())
        args = argparse.Namespace(**{**saved["args"], "markdown": args.markdown})
        render(
            args, saved["ready"], saved["inserts"], saved["reps"], saved["loadavg"],
            saved.get("others", []),
        )  # fmt: skip
        return
    started = time.perf_counter()
    inserts, reps, loadavg, others, rep_s = [], [], [], [], []
    try:
        ready = build_ready(args.rows)
        log(f"[apply bench] ready state built in {time.perf_counter() - started:.0f} s")
        for rep in range(1, args.reps + 1):
            so_far = time.perf_counter() - started
            if args.time_box and rep_s and so_far + max(rep_s) > args.time_box:
                log(
                    f"[apply bench] no repetition {rep}: {so_far:.0f} s so far plus"
                    f" {max(rep_s):.0f} s would pass --time-box {args.time_box} s"
                )
                break
            rep_started = time.perf_counter()
            births, seconds = single_insert()
            log(f"[apply bench] rep {rep}: one INSERT: {births:,} births in {seconds:.2f} s")
            inserts.append((births, seconds))
            runs = {}
            for name, target, during in (
                ("base", args.target_ms, None),
                ("load", args.target_ms, under_load(args)),
                ("other", args.other_target_ms, None),
                ("paused", args.target_ms, with_pause(args)),
            ):
                loadavg.append(os.getloadavg()[0])
                others.append(neighbour_sessions())
                runs[name] = res = batched_apply(ready["confirm"], args, target, during)
                f = collection_figures(res)
                log(
                    f"[apply bench] rep {rep}: apply {name} (target {target} ms):"
                    f" {f['births']:,} births in {f['span']:.2f} s ({f['rate']:,.0f}/s),"
                    f" {f['batches']} batches, longest {f['longest_ms']:.1f} ms, throttled"
                    f" {f['throttled_s']:.1f} s, play {res['wall']:.1f} s"
                    f" ({time.perf_counter() - started:.0f} s into the bench)"
                )
                if name == "load":
                    log(f"[apply bench] rep {rep}: load: {res['load']}, guard: {res['guard']}")
                if name == "paused":
                    log(f"[apply bench] rep {rep}: pause: {pause_figures(res)}")
            reps.append(runs)
            rep_s.append(time.perf_counter() - rep_started)
    finally:
        if not args.keep:
            for name in (READY, INSERT_DB, DB):
                drop_db(name)
            # Our pristine template (lab/bin/labdb made it, as playbooks/lab.yml would).
            psql(
                "postgres",
                f"UPDATE pg_database SET datistemplate = false WHERE datname = '{DB}_pristine';\n",
            )
            drop_db(f"{DB}_pristine")
    args.date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.code = run(["git", "log", "-1", "--format=%h", "--", "roles", "library", "module_utils"])[
        1
    ]
    # Every figure of the run, to render the sections again (--render) without rerunning.
    saved = REPO / "reports" / f"apply-bench-{run_id('figures')}.json"
    saved.parent.mkdir(exist_ok=True)
    figures = {
        "ready": ready, "inserts": inserts, "reps": reps, "loadavg": loadavg, "others": others,
    }  # fmt: skip
    saved.write_text(json.dumps({"args": vars(args), **figures}))
    log(f"[apply bench] {time.perf_counter() - started:.0f} s in all; figures in {saved}")
    render(args, ready, inserts, reps, loadavg, others)


def render(args, ready, inserts, reps, loadavg, others) -> None:
    sections = [
        (HEADING, markdown(args, ready, inserts, reps)),
        (HEADING_STEER, markdown_steer(args, ready, reps, loadavg, others)),
    ]
    if not args.markdown:
        for heading, section in sections:
            write_section(heading, section)
    print("\n".join(section for _, section in sections))


if __name__ == "__main__":
    main()
