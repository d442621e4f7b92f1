#!/usr/bin/env bash
# Separate credentials per role on the running Redis and RabbitMQ (docs/SECURITY.md
# "Roles", docs/OPERATIONS.md "Credentials per role"). Idempotent: re-running updates
# the users in place. services.sh is unchanged; this is a separate, explicit step.
#
#   scripts/roles.sh redis apply              producer, broker, results, data and
#                                             subscriber users
#   scripts/roles.sh redis caller NAME PREFIX one producer that may also read its own
#                                             answers: results of task ids PREFIX-…
#   scripts/roles.sh redis delete [NAME…]     remove the role users (and these callers)
#   scripts/roles.sh rabbitmq apply|delete    vhost, producer and worker users
#
# Settings (environment):
#   REDIS_ADMIN_URL   an account allowed ACL SETUSER (default redis://127.0.0.1:6379)
#   ROLES_PREFIX      user-name prefix (default "registry"): registry-producer, …
#   PRODUCER_PASSWORD, BROKER_PASSWORD, RESULTS_PASSWORD, DATA_PASSWORD,
#   SUBSCRIBER_PASSWORD, CALLER_PASSWORD, WORKER_PASSWORD
#                     the passwords to set; an unset one is generated and printed
#                     once, in the URL each process is given
#   REDIS_HOST_URL    host part printed in those URLs (default 127.0.0.1:6379)
#   RABBITMQ_VHOST    the vhost (default "/"); created when missing
#   RABBITMQ_HOST     host part printed in the AMQP URLs (default 127.0.0.1:5672)
set -euo pipefail

PREFIX=${ROLES_PREFIX:-registry}
ADMIN_URL=${REDIS_ADMIN_URL:-redis://127.0.0.1:6379}
HOST=${REDIS_HOST_URL:-127.0.0.1:6379}
VHOST=${RABBITMQ_VHOST:-/}
AMQP_HOST=${RABBITMQ_HOST:-127.0.0.1:5672}

say() { printf '[roles] %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

# User names and prefixes go into ACL rules and glob patterns: keep them plain.
plain() { [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_.]{0,63}$ ]] || die "$2 '$1': letters, digits, _ and . only"; }
plain "$PREFIX" ROLES_PREFIX

password() {  # password VAR: the variable's value, or a new random one
    local value=${!1:-}
    if [ -z "$value" ]; then value=$(openssl rand -hex 24); fi
    [[ $value =~ ^[A-Za-z0-9_.~-]{16,256}$ ]] || die "$1: 16-256 URL-safe characters"
    printf '%s' "$value"
}

rcli() { redis-cli --no-auth-warning -u "$ADMIN_URL" "$@"; }
# The server stores the SHA-256 (`#hash`), so no password appears in a process list.
digest() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

setuser() {  # setuser NAME PASSWORD RULE…
    local name=$1 secret=$2; shift 2
    local answer
    answer=$(rcli ACL SETUSER "$name" reset on "#$(digest "$secret")" "$@")
    [ "$answer" = "OK" ] || die "ACL SETUSER $name: $answer"
}

# --- Redis roles ------------------------------------------------------------------
# What a kombu producer does on the Redis transport (observed with MONITOR): SELECT,
# PING, queue_declare as MULTI/LLEN of the queue and its priority lists
# ("<queue>\x06\x16<n>")/EXEC, then LPUSH; a Celery producer (send_task with
# queue=) also declares the binding (SADD _kombu.binding.<queue> and, kombu 5.7,
# _kombu.binding_permanent.<queue>) and routes through it (SMEMBERS). No command that reads a list's content (LRANGE, LPOP, BRPOP…) and
# no other key: a producer can add messages but never read anyone else's.
PRODUCER_QUEUES=(
    "~registry" "~registry??[0-9]" "~registry.heartbeats" "~registry.heartbeats??[0-9]"
    "~_kombu.binding.registry" "~_kombu.binding.registry.heartbeats"
    "~_kombu.binding_permanent.registry" "~_kombu.binding_permanent.registry.heartbeats"
)
PRODUCER_COMMANDS=(
    -@all +ping +select +multi +exec +discard +lpush +llen +sadd +smembers
    +client\|setname +quit
)

# Workers and beat on the broker: the queues (sweeps too), kombu's unacked
# bookkeeping and bindings, the pidbox queues (<worker>.celery.pidbox and reply
# queues), and every channel: kombu PSUBSCRIBEs its fanout patterns
# ("/<db>.celery.pidbox", "/<db>.celeryev/*"), and Redis grants a pattern
# subscription only for the same literal pattern or allchannels. Only the
# registry's own processes hold this user.
BROKER_RULES=(
    "~registry" "~registry.*" "~registry??[0-9]" "~unacked*" "~_kombu.*"
    "~*.celery.pidbox*" allchannels +@all -@dangerous +info
)
# Workers writing results (celery-task-meta-<task id>, also published on a channel
# of that name for Celery's result consumers).
RESULTS_RULES=(
    "~celery-task-meta-*" "~celery-taskset-meta-*" "&celery-task-meta-*"
    +@all -@dangerous
)
# The registry's own data (CONTRACT §8): liveness and URL keys, the event stream and
# channel, its lifesign keys, and the expiry key-events the listener follows.
# notify-keyspace-events is set here (CONFIG is not granted): see redis_apply.
DATA_RULES=(
    "~ws:*" "~events:*" "~registry:*" "&events:*" "&__keyevent@*__:expired"
    +@all -@dangerous +info +config\|get
)

# Subscribers (another service following events): read the stream and the channel,
# nothing else; writing or trimming the stream is the data role's alone.
SUBSCRIBER_RULES=(
    "%R~events:*" "&events:broadcast" -@all +@read -@dangerous +subscribe +unsubscribe
    +ping +select +info +client\|setname +quit
)

url() { printf 'redis://%s:%s@%s/<db>' "$1" "$2" "$HOST"; }

redis_apply() {
    local producer broker results data subscriber
    producer=$(password PRODUCER_PASSWORD)
    broker=$(password BROKER_PASSWORD)
    results=$(password RESULTS_PASSWORD)
    data=$(password DATA_PASSWORD)
    subscriber=$(password SUBSCRIBER_PASSWORD)
    setuser "$PREFIX-producer" "$producer" "${PRODUCER_COMMANDS[@]}" "${PRODUCER_QUEUES[@]}"
    setuser "$PREFIX-broker" "$broker" "${BROKER_RULES[@]}"
    setuser "$PREFIX-results" "$results" "${RESULTS_RULES[@]}"
    setuser "$PREFIX-data" "$data" "${DATA_RULES[@]}"
    setuser "$PREFIX-subscriber" "$subscriber" "${SUBSCRIBER_RULES[@]}"
    # The liveness listener needs expired key-events; its user may not CONFIG SET.
    local flags
    flags=$(rcli CONFIG GET notify-keyspace-events | sed -n 2p)
    case $flags in *E*) ;; *) flags="${flags}E" ;; esac
    case $flags in *x* | *A*) ;; *) flags="${flags}x" ;; esac
    rcli CONFIG SET notify-keyspace-events "$flags" >/dev/null
    say "Redis users ${PREFIX}-{producer,broker,results,data,subscriber} set; notify-keyspace-events=$flags"
    printf 'producer (agents, gateway)  CELERY_BROKER_URL=%s\n' "$(url "$PREFIX-producer" "$producer")"
    printf 'workers and beat            CELERY_BROKER_URL=%s\n' "$(url "$PREFIX-broker" "$broker")"
    printf 'workers                     CELERY_RESULT_BACKEND=%s\n' "$(url "$PREFIX-results" "$results")"
    printf 'registry processes          REDIS_URL=%s\n' "$(url "$PREFIX-data" "$data")"
    printf 'event subscribers           REDIS_URL=%s\n' "$(url "$PREFIX-subscriber" "$subscriber")"
}

# A caller reads its own answers and may delete them once read (as the gateway
# does); GET and DEL are its only commands on those keys.
redis_caller() {  # a producer that reads its own answers only
    local name=${1:-} prefix=${2:-}
    [ -n "$name" ] && [ -n "$prefix" ] || die "usage: roles.sh redis caller NAME PREFIX"
    plain "$name" NAME
    # No '-' or glob character in PREFIX: task ids are PREFIX-<uuid>, so this
    # caller's pattern can never match another caller's ids.
    [[ $prefix =~ ^[A-Za-z0-9_]{1,64}$ ]] || die "PREFIX '$prefix': letters, digits and _ only"
    local secret
    secret=$(password CALLER_PASSWORD)
    setuser "$PREFIX-caller-$name" "$secret" "${PRODUCER_COMMANDS[@]}" "${PRODUCER_QUEUES[@]}" \
        +get +del +subscribe +unsubscribe \
        "~celery-task-meta-$prefix-*" "&celery-task-meta-$prefix-*"
    say "Redis user $PREFIX-caller-$name set: publishes, reads and deletes results of task ids $prefix-…"
    printf 'caller %s  broker and results URL=%s  task_id_prefix=%s\n' \
        "$name" "$(url "$PREFIX-caller-$name" "$secret")" "$prefix"
}

redis_delete() {
    local users=("$PREFIX-producer" "$PREFIX-broker" "$PREFIX-results" "$PREFIX-data"
        "$PREFIX-subscriber")
    local name
    for name in "$@"; do plain "$name" NAME; users+=("$PREFIX-caller-$name"); done
    rcli ACL DELUSER "${users[@]}" >/dev/null
    say "Redis users deleted: ${users[*]}"
}

# --- RabbitMQ roles ----------------------------------------------------------------
# Permissions are three regexes on resource names (configure, write, read). The
# producer publishes to the default exchange (write on amq.default) and declares the
# two queues it sends to (configure; a declaration matching the workers' is a no-op);
# it can read nothing, so it never sees another agent's message (and token).
# RabbitMQ has no declare-only permission: configure also allows deleting those two
# queues (docs/SECURITY.md says what that leaves open).
rabbitmq_apply() {
    local producer worker
    producer=$(password PRODUCER_PASSWORD)
    worker=$(password WORKER_PASSWORD)
    rabbitmqctl -q list_vhosts name | grep -qxF -- "$VHOST" || rabbitmqctl -q add_vhost "$VHOST"
    local user secret
    for user in "$PREFIX-producer:$producer" "$PREFIX-worker:$worker"; do
        secret=${user#*:}
        user=${user%%:*}
        if rabbitmqctl -q list_users | awk '{print $1}' | grep -qxF -- "$user"; then
            printf '%s' "$secret" | rabbitmqctl -q change_password "$user" >/dev/null
        else
            printf '%s' "$secret" | rabbitmqctl -q add_user "$user" >/dev/null
        fi
    done
    rabbitmqctl -q set_permissions -p "$VHOST" "$PREFIX-producer" \
        '^registry(\.heartbeats)?$' '^(amq\.default|registry(\.heartbeats)?)$' '^$'
    # Workers and beat: everything in the registry's vhost (queues, exchanges of
    # quorum mode, celeryev/pidbox fanouts, reply queues).
    rabbitmqctl -q set_permissions -p "$VHOST" "$PREFIX-worker" '.*' '.*' '.*'
    local path=$VHOST
    [ "$path" = "/" ] && path="%2F"
    say "RabbitMQ users $PREFIX-producer and $PREFIX-worker set on vhost $VHOST"
    printf 'producer (agents, gateway)  CELERY_BROKER_URL=amqp://%s:%s@%s/%s\n' \
        "$PREFIX-producer" "$producer" "$AMQP_HOST" "$path"
    printf 'workers and beat            CELERY_BROKER_URL=amqp://%s:%s@%s/%s\n' \
        "$PREFIX-worker" "$worker" "$AMQP_HOST" "$path"
}

rabbitmq_delete() {
    local user
    for user in "$PREFIX-producer" "$PREFIX-worker"; do
        rabbitmqctl -q delete_user "$user" >/dev/null 2>&1 || true
    done
    if [ "$VHOST" != "/" ] && [ "${RABBITMQ_DELETE_VHOST:-0}" = "1" ]; then
        rabbitmqctl -q delete_vhost "$VHOST" >/dev/null 2>&1 || true
    fi
    say "RabbitMQ users $PREFIX-producer and $PREFIX-worker deleted"
}

case "${1:-} ${2:-}" in
    "redis apply") redis_apply ;;
    "redis caller") redis_caller "${3:-}" "${4:-}" ;;
    "redis delete") shift 2; redis_delete "$@" ;;
    "rabbitmq apply") rabbitmq_apply ;;
    "rabbitmq delete") rabbitmq_delete ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
