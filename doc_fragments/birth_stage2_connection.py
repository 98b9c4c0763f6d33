"""Documentation shared by the modules that reach PostgreSQL through docker exec."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  container:
    description: Name of the Docker container that runs PostgreSQL on the host.
    type: str
    required: true
  db_name:
    description: Database to connect to inside the container.
    type: str
    required: true
  db_user:
    description: Role psql connects as.
    type: str
    required: true
  db_password:
    description:
      - Password for O(db_user), when the container's C(pg_hba.conf) asks for one.
      - Passed as C(PGPASSWORD) through the environment of the docker client and
        C(docker exec -e PGPASSWORD); never on a command line, never in the result.
    type: str
  docker_bin:
    description: The docker client; a bare name is looked up on the host's PATH.
    type: str
    default: docker
  idle_timeout:
    description:
      - PostgreSQL C(idle_in_transaction_session_timeout) of the session, so a client that
        stalls inside a transaction (a lost link) never holds its locks for long.
      - The session is hardened too, whatever this says - C(search_path) is
        C(pg_catalog, pg_temp), C(standard_conforming_strings) is on, and a wrapped
        transaction is REPEATABLE READ.
    type: str
    default: 5min
"""
