#!/usr/bin/env python3
"""Apply throughput: the batched apply procedure against one INSERT ... SELECT of the same rows.

Run from the repo root with the project's venv (the lab must be up; birth_lab is not touched):

    .venv/bin/python bench/apply_bench.py [--rows 1000000] [--batch-size 5000] [--reps 3]
                                          [--markdown]

It builds its own lab database (birth_bench_apply, from the default fixture) and adds
bench/fixtures/missing_1m.sql: one in-scope collection with --rows rows and no births. Then,
through the real playbooks, each act signed by its lab operator's key: a full Stage 2 run
(alice, the dry-run), an approved review (bob) and an open permit bound to that evidence
(carol); that "ready" state is kept as a template.
Each repetition then measures, on fresh copies of the same ready state:
  * one INSERT ... SELECT of the missing births (the code the trigger computes, NOT EXISTS,
    ON CONFLICT DO NOTHING: fn_birth_register's statement), timed in the database, COMMIT
    included;
  * `ansible-playbook stage2.yml --tags apply` with --batch-size: the procedure's throughput
    for the collection (its births over the span from its first batch's start to its last
    batch's end, every COMMIT but the last inside), its batches, the longest batch
    transaction (work as the batches table records it, and start to the next batch's start,
    which adds the COMMIT) and the play's wall time.
Targets (issue 4): apply throughput at least half the single INSERT's; no batch over 2 s.
It writes its section into docs/benchmarks.md (other sections kept); with --markdown it only
prints the section (bench/bench.py --apply includes it that way).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from labenv import CONTAINER, LAB, REPO, VENV, env

FIXTURE = REPO / "bench" / "fixtures" / "missing_1m.sql"
OUT = REPO / "docs" / "benchmarks.md"
HEADING = "## Apply: batched procedure against one INSERT ... SELECT"
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


def run_id(tag: str) -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-bench-" + tag


def summary(rid: str) -> dict:
    return json.loads((REPO / "reports" / rid / "summary.json").read_text())


def key(name: str) -> list[str]:
    """Sign as this lab operator (alice dry-runs, bob reviews, carol permits)."""
    return ["-e", f"birth_stage2_signing_key={OPERATORS / name / 'id_ed25519'}"]


def build_ready(rows: int) -> dict:
    log(f"[apply bench] {DB}: default fixture + {rows:,} rows without births ...")
    playbook(
        "playbooks/lab.yml", "-e", f"lab_db_name={DB}", "-e", f"lab_staging_root={STAGING_ROOT}"
    )
    playbook(
        "playbooks/lab.yml", "-e", f"lab_db_name={DB}", "-e", "lab_action=reset",
        "-e", "lab_reset_vps=false",
    )  # fmt: skip
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
    copy_db(DB, READY)
    return {"confirm": rid, "births": births, "plan": planned, "full_run_s": full}


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


def batched_apply(confirm: str, batch_size: int) -> dict:
    """The apply playbook on a fresh copy of the ready state; the batches table read back."""
    copy_db(READY, DB)
    warm(DB)
    rid = run_id("apply")
    wall = playbook(
        "stage2.yml", "--tags", "apply", *STAGE2_ARGS, "-e", f"birth_stage2_run_id={rid}",
        "-e", f"birth_stage2_apply_confirm={confirm}",
        "-e", f"birth_stage2_apply_batch_size={batch_size}",
    )  # fmt: skip
    ap = summary(rid)["apply"]
    out = psql(
        DB,
        f"""WITH b AS (
  SELECT births, duration_ms, started_at, finished_at,
         lead(started_at) OVER (ORDER BY batch_no) AS next_started
    FROM birth_stage2_apply_batches WHERE collection_name = '{COLLECTION}'
)
SELECT count(*), sum(births), extract(epoch FROM max(finished_at) - min(started_at)),
       max(duration_ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms),
       coalesce(max(extract(epoch FROM next_started - started_at) * 1000), max(duration_ms))
  FROM b;
""",
    )
    n, births, span, longest, p95, longest_to_next = out.strip().split("\t")
    return {
        "wall": wall,
        "batches": int(n),
        "births": int(births),
        "span": float(span),
        "longest_ms": float(longest),
        "p95_ms": float(p95),
        "longest_to_next_ms": float(longest_to_next),
        "status": ap[COLLECTION]["status"],
        "applied": ap[COLLECTION]["applied"],
    }


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / 2 if len(xs) > 1 else 0.0


def fmt(xs: list[float], digits: int = 2) -> str:
    return f"{med(xs):,.{digits}f} ± {spread(xs):,.{digits}f}"


def markdown(args: argparse.Namespace, ready: dict, inserts: list, applies: list) -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    insert_rate = [b / s for b, s in inserts]
    apply_rate = [a["births"] / a["span"] for a in applies]
    ratio = med(apply_rate) / med(insert_rate)
    worst_batch = max(a["longest_to_next_ms"] for a in applies)
    ratio_ok = "met" if ratio >= TARGET_RATIO else "missed"
    batch_ok = "met" if worst_batch <= TARGET_BATCH_MS else "missed"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = ".venv/bin/python bench/apply_bench.py " + " ".join(args.argv)
    return "\n".join(
        [
            HEADING,
            "",
            f"- Date: {now}",
            f"- Machine: {platform.node()}, {os.cpu_count()} cores, {cpu},"
            f" Linux {platform.release()}",
            f"- Command: `{command.strip()}`",
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
            f"| apply procedure, batches of {args.batch_size:,} (first batch start to last"
            f" batch end) | {applies[0]['births']:,} | {fmt([a['span'] for a in applies])}"
            f" | {fmt(apply_rate, 0)} |",
            f"| `stage2.yml --tags apply` wall time (preflight, gates, deploy, all"
            f" {len(ready['plan'])} collections, rerun dry-run, guards, summary) | |"
            f" {fmt([a['wall'] for a in applies])} | |",
            "",
            "| batch transactions | value | target |",
            "| --- | ---: | --- |",
            f"| apply throughput / single INSERT | {ratio:.2f} | ≥ {TARGET_RATIO} ({ratio_ok}) |",
            f"| batches of `{COLLECTION}` | {applies[0]['batches']:,} | |",
            f"| longest batch, work (ms) | {fmt([a['longest_ms'] for a in applies], 1)} | |",
            f"| 95th percentile batch, work (ms) | {fmt([a['p95_ms'] for a in applies], 1)} | |",
            f"| longest batch, start to next batch's start, COMMIT included (ms) |"
            f" {fmt([a['longest_to_next_ms'] for a in applies], 1)}"
            f" | ≤ {TARGET_BATCH_MS:.0f} ({batch_ok}) |",
            "",
            "Each batch reads one range of the table's pages (a TID range scan) and inserts the",
            "codes that have no birth, in its own transaction with its ledger and batch rows; the",
            "table is walked once, never rescanned from its start. The single INSERT holds one",
            f"transaction over all {args.rows:,} births; the apply never holds one longer than a"
            " batch.",
            "",
        ]
    )


def write_section(section: str) -> None:
    """Replace this benchmark's section in docs/benchmarks.md (or append it); keep the rest."""
    text = OUT.read_text() if OUT.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == HEADING), None)
    if start is None:
        lines = [*lines, "", *section.splitlines()]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines = [*lines[:start], *section.splitlines(), *lines[end:]]
    OUT.write_text("\n".join(lines).rstrip("\n") + "\n")
    log(f"[apply bench] wrote the section '{HEADING}' in {OUT}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--markdown", action="store_true", help="print the section, write nothing")
    ap.add_argument("--keep", action="store_true", help="keep the bench databases")
    args = ap.parse_args()
    args.argv = sys.argv[1:]

    ready = build_ready(args.rows)
    inserts, applies = [], []
    for rep in range(1, args.reps + 1):
        births, seconds = single_insert()
        log(f"[apply bench] rep {rep}: one INSERT: {births:,} births in {seconds:.2f} s")
        result = batched_apply(ready["confirm"], args.batch_size)
        if result["status"] != "done" or result["applied"] != args.rows:
            sys.exit(f"apply did not finish {COLLECTION}: {result}")
        log(
            f"[apply bench] rep {rep}: apply: {result['births']:,} births in"
            f" {result['span']:.2f} s, {result['batches']} batches,"
            f" longest {result['longest_to_next_ms']:.1f} ms"
            f" (play {result['wall']:.1f} s)"
        )
        inserts.append((births, seconds))
        applies.append(result)
    if not args.keep:
        for name in (READY, INSERT_DB, DB):
            drop_db(name)
    section = markdown(args, ready, inserts, applies)
    if args.markdown:
        print(section)
    else:
        write_section(section)
        print(section)


if __name__ == "__main__":
    main()
