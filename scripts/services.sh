#!/usr/bin/env bash
# Make sure PostgreSQL and Redis (and, with --rabbitmq, RabbitMQ) answer on localhost:
# start them if installed, install them from Debian packages if absent. Idempotent.
set -euo pipefail

want_rabbitmq=0
[ "${1:-}" = "--rabbitmq" ] && want_rabbitmq=1

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
    $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

say() { printf '[services] %s\n' "$*"; }

wait_for() {  # wait_for NAME CMD...
    local name=$1; shift
    for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    say "$name did not come up"; return 1
}

# --- PostgreSQL -----------------------------------------------------------
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
if ! command -v pg_isready >/dev/null 2>&1 || ! pg_up; then
    if [ ! -d /etc/postgresql ]; then
        say "installing PostgreSQL from Debian packages"
        apt_install postgresql postgresql-client
        installed_pg=1
    fi
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    if [ "${installed_pg:-0}" -eq 1 ]; then
        # A fresh Debian cluster asks for passwords over TCP; this is a developer box,
        # so let the local postgres user in from loopback (documented in the README).
        hba=/etc/postgresql/$version/main/pg_hba.conf
        grep -q "molecule-registry" "$hba" || $SUDO sed -i \
            "1i host all postgres 127.0.0.1/32 trust # molecule-registry dev\nhost all postgres ::1/128 trust # molecule-registry dev" "$hba"
    fi
    say "starting PostgreSQL $version"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
        || $SUDO pg_ctlcluster "$version" main start
    wait_for PostgreSQL pg_up
fi
say "PostgreSQL is up"

# --- Redis ----------------------------------------------------------------
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG; }
if ! command -v redis-server >/dev/null 2>&1; then
    say "installing Redis from Debian packages"
    apt_install redis-server
fi
if ! redis_up 2>/dev/null; then
    say "starting Redis"
    $SUDO mkdir -p /var/lib/redis /var/log/redis
    $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for Redis redis_up
fi
say "Redis is up"

# --- RabbitMQ (optional broker; the tests prove it works) -------------------
if [ "$want_rabbitmq" -eq 1 ]; then
    rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
    if ! rabbit_up; then
        if ! command -v rabbitmq-server >/dev/null 2>&1; then
            say "installing RabbitMQ from Debian packages"
            apt_install rabbitmq-server
        fi
        say "starting RabbitMQ"
        $SUDO rabbitmq-server -detached 2>/dev/null || true
        wait_for RabbitMQ rabbit_up
    fi
    say "RabbitMQ is up"
fi
