#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, for trying and testing quorum queues
# and broker failover (docs/OPERATIONS.md, "Production topology"). The existing node
# (rabbit@localhost on 5672) is never touched.
#
#   scripts/rabbitmq-cluster.sh [start|stop|status|env|pid N] [--dir DIR] [--base PORT] [--name PREFIX]
#
# Node N (1..3) is PREFIX<N>@localhost (PREFIX `molecule` by default), AMQP on BASE+N
# (BASE 15680 by default: 15681-15683) and Erlang distribution on BASE+10+N; its data
# (RABBITMQ_MNESIA_BASE) and logs (RABBITMQ_LOG_BASE) are under DIR
# (/var/tmp/molecule-rabbitmq by default). The nodes share the machine's Erlang cookie
# (the rabbitmq user's) and run as that user, like the packaged node. `start` is
# idempotent: stopped nodes are started and a node outside the cluster is joined to
# node 1. `env` prints the kombu failover URL (all three nodes) to export; `pid N` the
# OS process id of node N (for a kill -9). Needs only the rabbitmq-server package
# (scripts/services.sh --rabbitmq).
set -euo pipefail

cmd=${1:-start}
[ $# -gt 0 ] && shift
node_arg=""
if [ "$cmd" = pid ]; then node_arg=${1:?pid needs a node number}; shift; fi
dir=/var/tmp/molecule-rabbitmq
base=15680
prefix=molecule
while [ $# -gt 0 ]; do
    case $1 in
        --dir) dir=$2; shift 2 ;;
        --base) base=$2; shift 2 ;;
        --name) prefix=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 64 ;;
    esac
done

say() { printf '[rabbitmq-cluster] %s\n' "$*"; }
rmq_bin=/usr/lib/rabbitmq/bin
[ -x "$rmq_bin/rabbitmq-server" ] || { say "rabbitmq-server is not installed (scripts/services.sh --rabbitmq)"; exit 69; }
id rabbitmq >/dev/null 2>&1 || { say "no rabbitmq user (the rabbitmq-server package creates it)"; exit 69; }

name() { echo "$prefix$1@localhost"; }
port() { echo $((base + $1)); }

# Run as the rabbitmq user with node N's environment (its own ports and directories,
# the shared cookie in the rabbitmq user's home).
as_node() {  # as_node N CMD...
    local n=$1; shift
    local node_dir=$dir/node$n
    local run=(env HOME=/var/lib/rabbitmq
        RABBITMQ_NODENAME="$(name "$n")"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$(port "$n")"
        RABBITMQ_DIST_PORT=$((base + 10 + n))
        RABBITMQ_MNESIA_BASE="$node_dir/mnesia"
        RABBITMQ_LOG_BASE="$node_dir/log"
        RABBITMQ_PID_FILE="$node_dir/pid"
        RABBITMQ_CONFIG_FILE="$node_dir/rabbitmq.conf"
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
        RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
        ERL_EPMD_ADDRESS=127.0.0.1
        "$@")
    if [ "$(id -u)" -eq 0 ]; then runuser -u rabbitmq -- "${run[@]}"; else "${run[@]}"; fi
}
ctl() { local n=$1; shift; as_node "$n" "$rmq_bin/rabbitmqctl" -n "$(name "$n")" "$@"; }
up() { (exec 3<>"/dev/tcp/127.0.0.1/$(port "$1")") 2>/dev/null; }

prepare() {
    mkdir -p "$dir"
    echo "[]." >"$dir/enabled_plugins"   # no management listener to clash with 15672
    : >"$dir/rabbitmq-env.conf"           # not /etc/rabbitmq's (it names rabbit@localhost)
    for n in 1 2 3; do
        mkdir -p "$dir/node$n/log" "$dir/node$n/mnesia"
        cat >"$dir/node$n/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$(port "$n")
# A node cut off from the majority stops serving instead of diverging.
cluster_partition_handling = pause_minority
loopback_users.guest = true
EOF
    done
    [ "$(id -u)" -eq 0 ] && chown -R rabbitmq: "$dir"
    return 0
}

launch_node() {  # starts in the background; await_node waits for it
    up "$1" && return 0
    as_node "$1" "$rmq_bin/rabbitmq-server" -detached
}

await_node() {
    local n=$1
    # -detached returns before the node registers with epmd: wait for that first.
    for _ in $(seq 1 240); do ctl "$n" ping >/dev/null 2>&1 && break; sleep 0.5; done
    ctl "$n" await_startup --timeout 120 >/dev/null
}

case $cmd in
    start)
        prepare
        for n in 1 2 3; do launch_node "$n"; done  # the three boot side by side
        for n in 1 2 3; do await_node "$n"; done
        for n in 2 3; do
            if ! ctl 1 cluster_status --formatter json 2>/dev/null | grep -q "running_nodes.*$(name "$n")"; then
                ctl "$n" stop_app >/dev/null
                ctl "$n" join_cluster "$(name 1)" >/dev/null 2>&1 || true  # already a member
                ctl "$n" start_app >/dev/null
            fi
        done
        ctl 1 await_online_nodes 3 --timeout 120 >/dev/null 2>&1 || true
        say "up: $(name 1), $(name 2), $(name 3) on $(port 1)-$(port 3) in $dir"
        ;;
    stop)
        for n in 3 2 1; do
            if up "$n"; then ctl "$n" stop >/dev/null 2>&1 || true; fi
        done
        say "stopped (data kept in $dir; rm -rf it to start afresh)"
        ;;
    status)
        ctl 1 cluster_status 2>/dev/null | sed -n '/Running Nodes/,/Versions/p' | grep @ || say "node 1 is down"
        ;;
    pid)
        cat "$dir/node$node_arg/pid"; echo
        ;;
    env)
        urls=""
        for n in 1 2 3; do urls="$urls;amqp://guest:guest@127.0.0.1:$(port "$n")//"; done
        echo "CELERY_BROKER_URL=${urls#;}"
        echo "BROKER_QUEUE_TYPE=quorum"
        ;;
    *) echo "usage: $0 [start|stop|status|env|pid N] [--dir DIR] [--base PORT] [--name PREFIX]" >&2; exit 64 ;;
esac
