#!/usr/bin/env bash
# Primary, first start only: the official postgres image runs (or, when this file is not
# executable, sources) every *.sh and *.sql in /docker-entrypoint-initdb.d, in name order,
# after initdb and against a temporary server that listens on the Unix socket only.
#
# Creates the replication role and the physical slot the replica streams from, and lets
# the role connect for replication. The image's own pg_hba.conf line
# ("host all all all scram-sha-256") does not cover replication connections: the
# "replication" database must be named explicitly.
#
# Safe to be sourced: no "exit", no "set -u" (the image's entrypoint is not written for it).
set -eo pipefail

: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set: the password of the replication role}"
: "${REPLICATION_USER:=replicator}"
: "${REPLICATION_SLOT:=replica}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set repl_user="$REPLICATION_USER" \
    --set repl_password="$REPLICATION_PASSWORD" \
    --set repl_slot="$REPLICATION_SLOT" <<'SQL'
CREATE ROLE :"repl_user" WITH REPLICATION LOGIN PASSWORD :'repl_password';
SELECT pg_create_physical_replication_slot(:'repl_slot');
SQL

# scram-sha-256: the password above is stored as SCRAM (password_encryption's default
# since PostgreSQL 14). Appended after the image's own lines; read when the real server
# starts after initialisation.
printf 'host replication %s all scram-sha-256\n' "$REPLICATION_USER" >> "$PGDATA/pg_hba.conf"
