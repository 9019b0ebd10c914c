#!/bin/sh
# Entry point of the local PostgreSQL image (scripts/build_images.py), doing what the official
# postgres image's docker-entrypoint.sh does for the operator's dev database: on an empty
# PGDATA, initdb with POSTGRES_USER as superuser and POSTGRES_PASSWORD, password (scram) auth
# from anywhere, and POSTGRES_DB created; then exec the server listening on every address.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

if [ "${1:-postgres}" = "postgres" ]; then
    [ $# -gt 0 ] && shift
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        if [ -z "${POSTGRES_PASSWORD:-}" ]; then
            echo "POSTGRES_PASSWORD is not set" >&2
            exit 1
        fi
        mkdir -p "$PGDATA"
        chmod 700 "$PGDATA"
        pwfile=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
        initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
            --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
        rm -f "$pwfile"
        printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
        pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        if [ "$POSTGRES_DB" != "postgres" ]; then
            psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres \
                -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
        fi
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
        echo "PostgreSQL init process complete; ready for start up."
    fi
    exec postgres -c listen_addresses='*' "$@"
fi
exec "$@"
