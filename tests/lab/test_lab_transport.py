"""The lab is reached the way production is: SQL piped into `docker exec -i ... psql` on a
host behind SSH, where the container cannot see host paths."""

from __future__ import annotations

import subprocess

from tests.conftest import LAB_CONTAINER, LAB_DB, LAB_DIR, lab_env, lab_playbook, run_psql

SSH = [
    "ssh", "-p", "2222", "-i", str(LAB_DIR / "ssh" / "id_ed25519"),
    "-o", f"UserKnownHostsFile={LAB_DIR / 'ssh' / 'known_hosts'}",
    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "root@127.0.0.1",
]  # fmt: skip
PSQL = f"docker exec -i {LAB_CONTAINER} psql -X -q -A -t -v ON_ERROR_STOP=1 -d {LAB_DB}"


def on_vps(command: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SSH, command], input=stdin, text=True, capture_output=True, env=lab_env(), timeout=120
    )


def test_the_vps_runs_sql_through_docker_exec():
    proc = on_vps(PSQL, "SELECT count(*) FROM birth_registry;")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1210868"


def test_a_failing_sql_file_exits_non_zero():
    staged = "/opt/incomex/docs/mcp-writes/birth-stage2-lab-test/failing.sql"
    setup = on_vps(
        f"mkdir -p {staged.rsplit('/', 1)[0]} && "
        f"printf 'SELECT 1;\\nSELECT 1/0;\\nSELECT 2;\\n' > {staged}"
    )
    assert setup.returncode == 0, setup.stderr
    proc = on_vps(f"cat {staged} | {PSQL}")
    assert proc.returncode == 3  # psql's code for an error under ON_ERROR_STOP
    assert "division by zero" in proc.stderr
    assert proc.stdout.split() == ["1"]  # stopped at the error: the third statement never ran


def test_include_of_a_host_path_fails_inside_the_container():
    """The report's lesson: the container cannot see host paths, so \\i of one fails."""
    staged = "/opt/incomex/docs/mcp-writes/birth-stage2-lab-test/host_only.sql"
    assert on_vps(f"echo 'SELECT 42;' > {staged}").returncode == 0
    assert on_vps(f"cat {staged} | {PSQL}").stdout.strip() == "42"  # piped: it works
    proc = on_vps(PSQL, f"\\i {staged}\n")
    assert proc.returncode != 0
    assert "No such file or directory" in proc.stderr


def test_the_vps_refuses_password_logins():
    proc = subprocess.run(
        ["ssh", "-p", "2222", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
         "-o", f"UserKnownHostsFile={LAB_DIR / 'ssh' / 'known_hosts'}", "root@127.0.0.1", "true"],
        text=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Permission denied" in proc.stderr


def test_no_database_port_is_published():
    proc = subprocess.run(
        ["docker", "port", LAB_CONTAINER], text=True, capture_output=True, env=lab_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_a_governed_insert_births_exactly_one_row_through_the_gateway():
    out = run_psql(
        "BEGIN;"
        "INSERT INTO knowledge_documents (title) VALUES ('lab test');"
        "SELECT count(*) FROM birth_registry WHERE collection_name = 'knowledge_documents'"
        " AND born_at = now();"
        "ROLLBACK;"
    ).stdout.split()
    assert out == ["1"]


def test_lab_status_reports_the_running_lab():
    proc = lab_playbook("playbooks/lab.yml", "-e", "lab_action=status")
    assert "container=running" in proc.stdout
    assert "sshd=up" in proc.stdout
    assert "births=1210868" in proc.stdout


def test_lab_up_replaces_a_container_whose_processes_are_gone():
    """A machine restored from a snapshot keeps the engine's record ("running") but not the
    processes; exec then fails with "cannot exec in a stopped container" and such a container
    can be neither started nor stopped. The lab must replace it and keep its data volume."""
    name = "birth-lab-pg-stale-test"
    extra = ["-e", f"lab_container={name}"]
    docker = ["docker"]

    def engine(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*docker, *args], text=True, capture_output=True, env=lab_env(), timeout=120
        )

    try:
        lab_playbook("tests/fixtures/lab_container_only.yml", *extra)
        assert (
            engine(
                "exec",
                name,
                "psql",
                "-U",
                "postgres",
                "-c",
                "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)",
            ).returncode
            == 0
        )
        pid = engine("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
        conmon = subprocess.run(
            ["pgrep", "-f", f"conmon .*-n {name} "], text=True, capture_output=True
        ).stdout.split()
        assert pid.isdigit() and conmon
        # Everything dies at once, as in a power cut: the engine is told nothing.
        subprocess.run(["kill", "-9", *conmon, pid], check=True)
        assert engine("inspect", "--format", "{{.State.Status}}", name).stdout.strip() == "running"
        assert "stopped container" in engine("exec", name, "sh", "-c", "exit 0").stderr

        proc = lab_playbook("tests/fixtures/lab_container_only.yml", *extra)
        assert "Remove a container whose record outlived its processes" in proc.stdout
        kept = engine(
            "exec", name, "psql", "-U", "postgres", "-A", "-t", "-c", "SELECT x FROM kept"
        )
        assert kept.stdout.strip() == "7", kept.stderr
        # And a second run keeps it as it is.
        again = lab_playbook("tests/fixtures/lab_container_only.yml", *extra)
        assert "changed=0" in again.stdout
    finally:
        engine("rm", "--force", name)
        engine("volume", "rm", "--force", f"{name}-data")
