#!/bin/sh
# The lab container's entrypoint: create the cluster on first start, then run the server in
# the foreground. Local socket connections are trusted: inside the container only the
# operator's `docker exec` reaches them; no TCP port is published.
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  initdb -D "$PGDATA" -U postgres --auth-local=trust --auth-host=reject \
    --locale=C.UTF-8 --encoding=UTF8 >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='' -c jit=off \
  -c shared_buffers="${LAB_SHARED_BUFFERS:-512MB}" -c max_wal_size=4GB \
  -c maintenance_work_mem=256MB -c work_mem=32MB
