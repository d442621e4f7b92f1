#!/usr/bin/env bash
# A second PostgreSQL, primary + streaming standby (synchronous replication), on this
# machine, for trying and testing the registry's failover (docs/OPERATIONS.md,
# "Production topology"). The main cluster on 5432 is never touched.
#
#   scripts/pg-standby.sh [start|stop|status|promote|kill-primary|env] [--dir DIR] [--base PORT]
#
# Ports: BASE (primary, 15440 by default) and BASE+1 (standby); data and logs in DIR
# (/var/tmp/molecule-pg by default), owned by the `postgres` user. `start` is idempotent:
# it creates what is missing (initdb, pg_basebackup) and starts what is stopped.
# The primary waits for the standby to confirm each commit (synchronous_commit=on,
# synchronous_standby_names=standby): a commit the registry acknowledged exists on the
# standby. `promote` makes the standby the primary (it then runs alone, without a
# synchronous standby, until one is rebuilt: `stop`, `rm -rf DIR`, `start`).
# `env` prints the multi-host DATABASE_URL to export. Needs only the PostgreSQL server
# packages (scripts/services.sh).
set -euo pipefail

cmd=${1:-start}
[ $# -gt 0 ] && shift
dir=/var/tmp/molecule-pg
base=15440
while [ $# -gt 0 ]; do
    case $1 in
        --dir) dir=$2; shift 2 ;;
        --base) base=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 64 ;;
    esac
done

primary_port=$base
standby_port=$((base + 1))
primary=$dir/primary
standby=$dir/standby
say() { printf '[pg-standby] %s\n' "$*"; }

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/postgres" ] || { say "PostgreSQL server binaries not found (scripts/services.sh installs them)"; exit 69; }

# PostgreSQL refuses to run as root: run its tools as `postgres` when we are root.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
pg() { as_pg "$bin/$1" "${@:2}"; }
running() { [ -f "$1/postmaster.pid" ] && pg pg_ctl -D "$1" status >/dev/null 2>&1; }
ready() { pg pg_isready -q -h 127.0.0.1 -p "$1"; }

start_node() {  # start_node DATADIR PORT
    running "$1" && return 0
    pg pg_ctl -D "$1" -l "$1/log" -w -t 60 -o "-p $2" start >/dev/null
}

create_primary() {
    [ -f "$primary/PG_VERSION" ] && return 0
    mkdir -p "$primary"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir" "$primary"
    chmod 700 "$primary"
    pg initdb -D "$primary" -U postgres --auth=trust >/dev/null
    cat >>"$primary/postgresql.conf" <<EOF
# scripts/pg-standby.sh
listen_addresses = '127.0.0.1'
port = $primary_port
unix_socket_directories = '$dir'
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
hot_standby = on
synchronous_commit = on
synchronous_standby_names = 'standby'
max_connections = 200
shared_buffers = 64MB
EOF
    echo "host replication postgres 127.0.0.1/32 trust" >>"$primary/pg_hba.conf"
}

create_standby() {
    [ -f "$standby/PG_VERSION" ] && return 0
    mkdir -p "$standby"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$standby"
    chmod 700 "$standby"
    # -R: standby.signal and primary_conninfo; -C/-S: a slot, so the primary keeps the
    # WAL the standby has not received yet.
    pg pg_basebackup -h 127.0.0.1 -p "$primary_port" -U postgres -D "$standby" \
        -R -X stream -C -S standby_slot -c fast >/dev/null
    cat >>"$standby/postgresql.auto.conf" <<EOF
port = $standby_port
primary_conninfo = 'host=127.0.0.1 port=$primary_port user=postgres application_name=standby'
# Once promoted it runs alone: waiting for a standby it does not have would hang commits.
synchronous_standby_names = ''
EOF
}

case $cmd in
    start)
        create_primary
        start_node "$primary" "$primary_port"
        create_standby
        start_node "$standby" "$standby_port"
        for _ in $(seq 1 100); do
            state=$(pg psql -h 127.0.0.1 -p "$primary_port" -U postgres -Atc \
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'" 2>/dev/null || true)
            [ "$state" = "sync" ] && break
            # After `promote` the old primary is gone: nothing to wait for.
            running "$primary" || break
            sleep 0.1
        done
        say "up: primary on $primary_port, standby on $standby_port (${state:-no} replication) in $dir"
        ;;
    stop)
        for node in "$standby" "$primary"; do
            if running "$node"; then pg pg_ctl -D "$node" -m fast -w stop >/dev/null; fi
        done
        say "stopped (data kept in $dir; rm -rf it to start afresh)"
        ;;
    status)
        for pair in "primary:$primary_port" "standby:$standby_port"; do
            if ready "${pair#*:}"; then
                recovery=$(pg psql -h 127.0.0.1 -p "${pair#*:}" -U postgres -Atc "SELECT pg_is_in_recovery()")
                echo "${pair%%:*} ${pair#*:} up (in recovery: $recovery)"
            else
                echo "${pair%%:*} ${pair#*:} down"
            fi
        done
        ;;
    kill-primary)  # a crash: SIGKILL the postmaster (its backends exit on their own)
        pid=$(head -n 1 "$primary/postmaster.pid")
        kill -9 "$pid"
        say "killed the primary (pid $pid)"
        ;;
    promote)
        pg pg_ctl -D "$standby" -w promote >/dev/null
        say "standby on $standby_port promoted"
        ;;
    env)
        echo "DATABASE_URL=postgresql+psycopg2://postgres@/molecule_registry?host=127.0.0.1:$primary_port&host=127.0.0.1:$standby_port&target_session_attrs=read-write"
        ;;
    *) echo "usage: $0 [start|stop|status|promote|kill-primary|env] [--dir DIR] [--base PORT]" >&2; exit 64 ;;
esac
