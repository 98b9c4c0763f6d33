"""Running the real playbooks against one lab database, isolated when BIRTH_LAB_DB says so.

BIRTH_LAB_DB=<db> (made with `ansible-playbook playbooks/lab.yml -e lab_db_name=<db>`) points
these helpers at that database with its own staging root and run lease, beside other users of
the default lab.
"""

# The SQL below is built from the lab's own names and fixed test values, never from input.
# ruff: noqa: S608

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.conftest import LAB_DB, LAB_DIR, lab_env, lab_playbook, psql_prefix, run_psql
from tests.test_runbook import squash

DEFAULT_DB = "birth_lab"
ISOLATED = LAB_DB != DEFAULT_DB
STAGING_ROOT = (
    f"/opt/incomex/docs/mcp-writes-{LAB_DB}" if ISOLATED else "/opt/incomex/docs/mcp-writes"
)
# birth_stage2_run_lock_path's default: the lease lives in the staging root.
LOCK_PATH = Path(STAGING_ROOT) / ".birth-stage2.lock"
STAGE2_ARGS = (
    ["-e", f"birth_stage2_db_name={LAB_DB}", "-e", f"birth_stage2_staging_root={STAGING_ROOT}"]
    if ISOLATED
    else []
)
RESET = ["playbooks/lab.yml", "-e", "lab_action=reset"] + (
    ["-e", f"lab_db_name={LAB_DB}", "-e", "lab_reset_vps=false"] if ISOLATED else []
)


def reset_lab() -> None:
    lab_playbook(*RESET)
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    LOCK_PATH.unlink(missing_ok=True)


def sql(text: str, check: bool = True) -> list[str]:
    return [line for line in run_psql(text, db=LAB_DB, check=check).stdout.splitlines() if line]


def births() -> tuple[str, ...]:
    """Total births and a fingerprint of the births per collection."""
    return tuple(
        sql(
            "SELECT count(*), md5(coalesce(string_agg(collection_name || ':' || n, ',' "
            "ORDER BY collection_name), '')) FROM (SELECT collection_name, count(*) AS n "
            "FROM public.birth_registry GROUP BY collection_name) c"
        )[0].split("\t")
    )


def play(*args: str, playbook: str = "stage2.yml") -> tuple[int, str]:
    """Run a playbook on the lab; (rc, its output with Ansible's line wrapping undone)."""
    # The test's own -e come last, so they win over the isolated database's.
    proc = lab_playbook(playbook, *STAGE2_ARGS, *args, check=False)
    return proc.returncode, squash(proc.stdout + proc.stderr).replace("''", "'")


class Writer:
    """The application, on loopback: one psql session inserting a governed row (one birth
    by the gateway trigger) and moving a row of another collection (an UPDATE, so its tuple
    moves to another page), committing each, every ``interval`` seconds.

    Bounded: it stops by itself after ``limit`` iterations, and ``stop()`` ends it earlier.
    ``made`` is the births it made in ``insert_into`` (counted after it stopped).
    ``update_all`` moves every row of ``update`` each time (a walk over that table meets
    tuples that moved behind it and ahead of it).
    """

    def __init__(
        self,
        insert_into="knowledge_documents",
        update="dot_domain_rules",
        interval=0.2,
        limit=1500,
        update_all=False,
    ):
        self.insert_into, self.update, self.update_all = insert_into, update, update_all
        self.interval, self.limit = interval, limit
        self.app = f"birth_lab_writer_{uuid.uuid4().hex[:8]}"
        self.proc = None
        self.made = None
        self._before = None

    def _births(self) -> int:
        return int(
            sql(
                "SELECT count(*) FROM public.birth_registry WHERE collection_name = "
                f"'{self.insert_into}'"
            )[0]
        )

    def start(self) -> Writer:
        self._before = self._births()
        # One row per iteration, or every row (each tuple moves, again and again).
        where = (
            "true"
            if self.update_all
            else f"id = (SELECT min(id) + (i % 97) FROM public.{self.update})"
        )
        script = f"""SET application_name = '{self.app}';
DO $writer$
BEGIN
  FOR i IN 1..{int(self.limit)} LOOP
    INSERT INTO public.{self.insert_into} (title) VALUES ('written by the app ' || i);
    UPDATE public.{self.update} SET title = coalesce(title, '') || '.'
     WHERE {where};
    COMMIT;
    PERFORM pg_sleep({float(self.interval)});
  END LOOP;
END
$writer$;
"""
        self.proc = subprocess.Popen(
            [*psql_prefix(LAB_DB), "-X", "-q", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=lab_env(),
        )
        self.proc.stdin.write(script)
        self.proc.stdin.close()
        # Wait for its first birth, so the traffic is there when the run starts.
        deadline = time.monotonic() + 30
        while self._births() == self._before:
            assert self.proc.poll() is None, self.proc.stderr.read()
            assert time.monotonic() < deadline, "the writer made no birth in 30 s"
            time.sleep(0.1)
        return self

    def stop(self) -> int:
        sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = '{self.app}'"
        )
        self.proc.wait(timeout=60)
        self.made = self._births() - self._before
        return self.made

    def __enter__(self) -> Writer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# A TCP relay of a test's own in front of the lab's sshd: killing it cuts that run's SSH link
# (the VPS "drops off the network" for it) while the VPS stays up for every other run.
RELAY = """
import socket, sys, threading
listen = socket.socket()
listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listen.bind(("127.0.0.1", 0))
listen.listen()
print(listen.getsockname()[1], flush=True)
def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
while True:
    near, _ = listen.accept()
    far = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    threading.Thread(target=pipe, args=(near, far), daemon=True).start()
    threading.Thread(target=pipe, args=(far, near), daemon=True).start()
"""


def ssh_relay(vps_port: int = 2222) -> tuple[subprocess.Popen, list[str]]:
    """(the relay process, the -e arguments that send a playbook's SSH through it)."""
    relay = subprocess.Popen(
        [sys.executable, "-c", RELAY, str(vps_port)], stdout=subprocess.PIPE, text=True
    )
    port = int(relay.stdout.readline())
    ssh_args = (
        f"-o UserKnownHostsFile={LAB_DIR}/ssh/known_hosts -o StrictHostKeyChecking=yes "
        f"-o IdentitiesOnly=yes -o HostKeyAlias=[127.0.0.1]:{vps_port}"
    )
    extra = json.dumps({"ansible_port": port, "ansible_ssh_common_args": ssh_args})
    return relay, ["-e", extra]
