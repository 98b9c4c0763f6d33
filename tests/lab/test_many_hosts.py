"""Several VPS hosts in one play (two lab databases, each with its own staging root, behind
the same lab sshd): each host's run has its own id and report directory naming the host,
`reports/latest-<host>` per host, one line per host at the end of the output; one host
failing does not stop the other's read-only phases, and during the apply one host's failure
stops every host before it writes (any_errors_fatal).

The inventory is generated in a temporary directory; the databases are <lab db>_host_a and
<lab db>_host_b (made once with playbooks/lab.yml, reset for each test).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import LAB_CONTAINER, LAB_DB, LAB_DIR, REPO, lab_playbook, run_psql
from tests.test_runbook import squash

HOSTS = {"lab-vps-a": f"{LAB_DB}_host_a", "lab-vps-b": f"{LAB_DB}_host_b"}
ROOTS = {h: Path(f"/opt/incomex/docs/mcp-writes-{db}") for h, db in HOSTS.items()}
REPORTS = REPO / "reports"
CLASSIFIED = (
    "SELECT count(*) FROM collection_registry "
    "WHERE birth_code_source = 'inferred_from_existing_trigger'"
)
BIRTHS = "SELECT count(*) FROM birth_registry"


def sql(host: str, text: str) -> str:
    return run_psql(text, db=HOSTS[host]).stdout.strip()


def write_inventory(directory: Path, **host_vars: dict) -> Path:
    """Two hosts reaching the lab VPS as inventories/lab does, each with its own database
    and staging root (plus any per-host variables given)."""
    common = {
        "ansible_host": "127.0.0.1",
        "ansible_port": 2222,
        "ansible_user": "root",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_private_key_file": f"{LAB_DIR}/ssh/id_ed25519",
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={LAB_DIR}/ssh/known_hosts "
        "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
        "lab_dir": str(LAB_DIR),
        # Who may sign which act: the lab's operators (the VPS key may sign dry-runs).
        "birth_stage2_allowed_signers": f"{LAB_DIR}/allowed_signers",
        "birth_stage2_container": LAB_CONTAINER,
        "birth_stage2_db_user": "postgres",
    }
    hosts = {
        h: {
            **common,
            "birth_stage2_db_name": db,
            "birth_stage2_staging_root": str(ROOTS[h]),
            **host_vars.get(h.replace("-", "_"), {}),
        }
        for h, db in HOSTS.items()
    }
    path = directory / "hosts.yml"
    path.write_text(json.dumps({"all": {"children": {"birth_vps": {"hosts": hosts}}}}))
    return path


def play(inventory: Path, *args: str, playbook: str = "stage2.yml") -> tuple[int, str]:
    proc = lab_playbook(playbook, "-i", str(inventory), *args, check=False)
    return proc.returncode, squash(proc.stdout + proc.stderr)


def latest(host: str) -> Path:
    return (REPORTS / f"latest-{host}").resolve()


def failed_run_of(host: str, out: str) -> str:
    found = re.search(rf"Stage 2 run (\S+) on {host} FAILED", out)
    assert found, out[-3000:]
    return found.group(1)


@pytest.fixture(scope="module", autouse=True)
def _two_lab_databases():
    for db in HOSTS.values():
        # Makes the database once (from the fixture), then back to pristine for this module.
        lab_playbook("playbooks/lab.yml", "-e", f"lab_db_name={db}", "-e", "lab_reset_vps=false")


@pytest.fixture
def inventory(tmp_path):
    for db in HOSTS.values():
        lab_playbook(
            "playbooks/lab.yml",
            "-e", "lab_action=reset", "-e", f"lab_db_name={db}", "-e", "lab_reset_vps=false",
        )  # fmt: skip
    for root in ROOTS.values():
        root.mkdir(mode=0o750, exist_ok=True)
        (root / ".birth-stage2.lock").unlink(missing_ok=True)
    return write_inventory(tmp_path)


def test_one_host_fails_while_the_other_finishes(inventory):
    sql(
        "lab-vps-b",
        "CREATE FUNCTION public.test_hosts_leak() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN INSERT INTO public.birth_registry (collection_name, entity_code, birth_source) "
        "VALUES ('collection_registry', 'leak::' || NEW.collection_name, 'gateway'); "
        "RETURN NULL; END $$; "
        "CREATE TRIGGER zz_test_hosts_leak AFTER UPDATE OF birth_code_kind "
        "ON collection_registry FOR EACH ROW EXECUTE FUNCTION public.test_hosts_leak();",
    )
    births_b = sql("lab-vps-b", BIRTHS)
    rc, out = play(inventory, "--tags", "classify,dryrun")
    assert rc != 0, out[-3000:]

    # Host a finished: its own run, directory, summary and latest link, all naming it.
    run_a = latest("lab-vps-a")
    assert run_a.name.endswith("-lab-vps-a")
    summary_a = json.loads((run_a / "summary.json").read_text())
    assert summary_a["inventory_host"] == "lab-vps-a"
    assert summary_a["status"] == "FINISHED"
    assert summary_a["phases"] == ["preflight", "classify", "dryrun"]
    assert sql("lab-vps-a", CLASSIFIED) == "39"

    # Host b failed in classify, rolled back, and wrote its checkpoint, naming itself.
    run_b = failed_run_of("lab-vps-b", out)
    assert run_b.endswith("-lab-vps-b")
    summary_b = json.loads((REPORTS / run_b / "summary.json").read_text())
    assert summary_b["inventory_host"] == "lab-vps-b"
    assert summary_b["status"] == "FAILED"
    assert summary_b["failure"]["phase"] == "classify"
    checkpoint_b = (REPORTS / run_b / "00_checkpoint.md").read_text()
    assert "Host: `lab-vps-b`" in checkpoint_b
    assert sql("lab-vps-b", CLASSIFIED) == "0"
    assert sql("lab-vps-b", BIRTHS) == births_b
    assert not (REPORTS / "latest-lab-vps-b").exists() or latest("lab-vps-b").name != run_b

    # The output ends with one line per host.
    assert f"lab-vps-a: run {run_a.name} FINISHED" in out
    assert f"lab-vps-b: run {run_b} FAILED in classify (docs/RUNBOOK.md#birth-leak)" in out
    # Both leases were released.
    assert not any((root / ".birth-stage2.lock").exists() for root in ROOTS.values())


def test_apply_stops_every_host_when_one_fails(inventory, tmp_path):
    rc, out = play(inventory)
    assert rc == 0, out[-3000:]
    runs = {h: latest(h).name for h in HOSTS}
    sha_a = json.loads((latest("lab-vps-a") / "summary.json").read_text())["evidence"]["sha256"]
    # Host a has every gate open (bob's signed review, carol's signed permit); host b none.
    operators = LAB_DIR / "operators"
    for playbook, args in (
        ("playbooks/review.yml", ["-e", "birth_stage2_reviewer=t2-reviewer",
                                  "-e", f"birth_stage2_signing_key={operators}/bob/id_ed25519",
                                  "-e", "birth_stage2_review_verdict=approved",
                                  "-e", f"birth_stage2_review_evidence={sha_a}",
                                  "-e", f"birth_stage2_review_run={runs['lab-vps-a']}"]),
        ("playbooks/permit.yml", ["-e", "birth_stage2_permit_action=open",
                                  "-e", "birth_stage2_permit_issuer=owner",
                                  "-e", f"birth_stage2_signing_key={operators}/carol/id_ed25519",
                                  "-e", f"birth_stage2_permit_evidence={sha_a}",
                                  "-e", "birth_stage2_permit_expires_in=2h"]),
    ):  # fmt: skip
        rc, out = play(inventory, "--limit", "lab-vps-a", *args, playbook=playbook)
        assert rc == 0, out[-3000:]
    ledger = "SELECT status, count(*) FROM birth_backfill_ledger GROUP BY 1 ORDER BY 1"
    before = {h: (sql(h, BIRTHS), sql(h, ledger)) for h in HOSTS}

    # Each host confirms its own dry-run (host vars); the apply runs on both at once.
    both = write_inventory(
        tmp_path,
        **{h.replace("-", "_"): {"birth_stage2_apply_confirm": runs[h]} for h in HOSTS},
    )
    rc, out = play(both, "--tags", "apply")
    assert rc != 0, out[-3000:]
    assert "Apply refused on lab-vps-b" in out
    # Host a stopped before it wrote: births, ledger and its permit as they were.
    assert {h: (sql(h, BIRTHS), sql(h, ledger)) for h in HOSTS} == before
    assert (
        sql(
            "lab-vps-a",
            "SELECT count(*) FROM governance_permits WHERE status = 'open' AND expires_at > now()",
        )
        == "1"
    )
    run_a = failed_run_of("lab-vps-a", out)
    summary_a = json.loads((REPORTS / run_a / "summary.json").read_text())
    assert summary_a["failure"]["phase"] == "apply"
    assert summary_a["failure"]["message"].startswith(
        "stopped because another host of the play failed"
    )
    assert summary_a["failure"]["runbook"] == "docs/RUNBOOK.md#another-host-failed"
    assert not any((root / ".birth-stage2.lock").exists() for root in ROOTS.values())
