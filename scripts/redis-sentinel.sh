#!/usr/bin/env bash
# A Redis primary, a replica and three Sentinels on this machine, for trying and testing
# the registry's Sentinel support (docs/OPERATIONS.md, "Production topology").
#
#   scripts/redis-sentinel.sh [start|stop|status|env] [--dir DIR] [--base PORT] [--master NAME]
#
# Ports: BASE (primary), BASE+1 (replica), BASE+10..BASE+12 (Sentinels); BASE is 16390 by
# default. Data, configs and logs live in DIR (/var/tmp/molecule-sentinel by default).
# `start` is idempotent (running nodes are left alone; a node that stopped is started
# again with its last configuration, so after a failover the old primary rejoins as a
# replica). `env` prints the REDIS_SENTINELS / REDIS_SENTINEL_MASTER lines to export.
# The shared Redis on 6379 is never touched. Needs only redis-server (scripts/services.sh).
set -euo pipefail

cmd=${1:-start}
[ $# -gt 0 ] && shift
dir=/var/tmp/molecule-sentinel
base=16390
master=molecule
while [ $# -gt 0 ]; do
    case $1 in
        --dir) dir=$2; shift 2 ;;
        --base) base=$2; shift 2 ;;
        --master) master=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 64 ;;
    esac
done

primary=$base
replica=$((base + 1))
sentinels=("$((base + 10))" "$((base + 11))" "$((base + 12))")
say() { printf '[redis-sentinel] %s\n' "$*"; }
up() { redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG; }
pidof_port() { [ -f "$dir/$1/redis.pid" ] && cat "$dir/$1/redis.pid"; }

wait_up() {
    for _ in $(seq 1 50); do up "$1" && return 0; sleep 0.1; done
    say "port $1 did not come up (see $dir/$1/log)"; return 1
}

start_redis() {  # start_redis PORT [replicaof-port]
    local port=$1 node=$dir/$1
    up "$port" && return 0
    mkdir -p "$node"
    if [ ! -f "$node/redis.conf" ]; then
        {
            echo "port $port"
            echo "bind 127.0.0.1"
            echo "dir $node"
            echo "pidfile $node/redis.pid"
            echo "logfile $node/log"
            echo "daemonize yes"
            echo "save \"\""
            # AOF every second: what a primary acknowledged survives its own restart.
            echo "appendonly yes"
            echo "databases 64"
            echo "notify-keyspace-events Ex"
            [ -n "${2:-}" ] && echo "replicaof 127.0.0.1 $2"
        } >"$node/redis.conf"
    fi
    redis-server "$node/redis.conf"
    wait_up "$port"
}

start_sentinel() {  # start_sentinel PORT
    local port=$1 node=$dir/$1
    up "$port" && return 0
    mkdir -p "$node"
    if [ ! -f "$node/sentinel.conf" ]; then
        {
            echo "port $port"
            echo "bind 127.0.0.1"
            echo "dir $node"
            echo "pidfile $node/redis.pid"
            echo "logfile $node/log"
            echo "daemonize yes"
            echo "sentinel monitor $master 127.0.0.1 $primary 2"
            # Fast enough for tests and the failover bench; production keeps its own.
            echo "sentinel down-after-milliseconds $master 1000"
            echo "sentinel failover-timeout $master 5000"
            echo "sentinel parallel-syncs $master 1"
        } >"$node/sentinel.conf"
    fi
    # Sentinel rewrites its file (the current primary, the known peers).
    redis-server "$node/sentinel.conf" --sentinel
    wait_up "$port"
}

stop_port() {
    local port=$1 pid
    pid=$(pidof_port "$port" || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$dir/$port/redis.pid"
}

case $cmd in
    start)
        command -v redis-server >/dev/null || { say "redis-server is not installed (scripts/services.sh)"; exit 69; }
        start_redis "$primary"
        start_redis "$replica" "$primary"
        for port in "${sentinels[@]}"; do start_sentinel "$port"; done
        for _ in $(seq 1 50); do
            redis-cli -p "${sentinels[0]}" sentinel get-master-addr-by-name "$master" 2>/dev/null \
                | grep -q . && break
            sleep 0.1
        done
        say "up: primary/replica on $primary/$replica, Sentinels on ${sentinels[*]}, master '$master' in $dir"
        ;;
    stop)
        for port in "${sentinels[@]}" "$replica" "$primary"; do stop_port "$port"; done
        say "stopped (data kept in $dir; rm -rf it to start afresh)"
        ;;
    status)
        for port in "$primary" "$replica" "${sentinels[@]}"; do
            if up "$port"; then echo "$port up"; else echo "$port down"; fi
        done
        redis-cli -p "${sentinels[0]}" sentinel get-master-addr-by-name "$master" 2>/dev/null | paste -sd: || true
        ;;
    env)
        echo "REDIS_SENTINELS=$(printf '127.0.0.1:%s,' "${sentinels[@]}" | sed 's/,$//')"
        echo "REDIS_SENTINEL_MASTER=$master"
        ;;
    *) echo "usage: $0 [start|stop|status|env] [--dir DIR] [--base PORT] [--master NAME]" >&2; exit 64 ;;
esac
