#!/usr/bin/env bash
# Entrypoint of the replica service in docker-compose.yml.
#
# The official postgres image has no replica mode. On the first start (empty $PGDATA)
# this script waits for the primary, clones it with pg_basebackup -R (which writes
# standby.signal and primary_conninfo/primary_slot_name into postgresql.auto.conf),
# then hands over to the image's own entrypoint: $PGDATA now holds a cluster, so that
# skips initdb and the init scripts, fixes ownership and permissions, and execs the
# server as the postgres user (gosu) with the service's command.
set -Eeuo pipefail

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
PRIMARY_HOST="${PRIMARY_HOST:-primary}"
PRIMARY_PORT="${PRIMARY_PORT:-5432}"
REPLICATION_USER="${REPLICATION_USER:-replicator}"
REPLICATION_SLOT="${REPLICATION_SLOT:-replica}"
WAIT_SECONDS="${WAIT_SECONDS:-120}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set: the password of the replication role}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "replica: waiting for the primary at $PRIMARY_HOST:$PRIMARY_PORT"
    waited=0
    until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER"; do
        if [ "$waited" -ge "$WAIT_SECONDS" ]; then
            echo "replica: the primary is not ready after ${WAIT_SECONDS} s" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done

    mkdir -p "$PGDATA"
    if [ -n "$(ls -A "$PGDATA")" ]; then
        echo "replica: $PGDATA is not empty but holds no cluster; refusing to overwrite it" >&2
        exit 1
    fi
    chown postgres:postgres "$PGDATA"
    chmod 0700 "$PGDATA"

    echo "replica: pg_basebackup from $PRIMARY_HOST:$PRIMARY_PORT, slot $REPLICATION_SLOT"
    # -R: standby.signal + primary_conninfo; -X stream: the WAL written during the backup
    # comes over a second connection; -S: stream from the slot the primary's init script
    # created, so the primary keeps the WAL the replica has not received yet.
    PGPASSWORD="$REPLICATION_PASSWORD" gosu postgres pg_basebackup \
        --host="$PRIMARY_HOST" --port="$PRIMARY_PORT" --username="$REPLICATION_USER" \
        --pgdata="$PGDATA" --write-recovery-conf --wal-method=stream \
        --slot="$REPLICATION_SLOT" --checkpoint=fast --no-password
fi

exec docker-entrypoint.sh "$@"
