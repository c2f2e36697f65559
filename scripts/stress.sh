#!/usr/bin/env bash
# `make stress`: a release server on a temporary port and store, the Go original's scenario
# (500 chat members x 11 messages at 1-3 s) together with 500 alarm streams, then the summary;
# then the same chat scenario in a mixed room: half the members on the chat's plain TCP port
# (--chat-tcp, the original's own transport), half over SSE. Members per run: STRESS_CLIENTS (500).
# Exit status: the tool's (0 only on PASS), or 1 if the server's log does not show one close
# for every open. Extra tool flags: STRESS_ARGS="--json"; port: STRESS_PORT (default 18181).
# STRESS_AUTH=1: the server runs with auth on (an HS256 secret made here) and the tool mints a
# short-lived token for each of its clients' requests and streams.
# STRESS_NODES=2: instead, two release nodes on one redis-server of the script's own (loopback,
# STRESS_REDIS_PORT, default STRESS_PORT+3; no persistence; stopped by its pid) with
# `--redis` and `--alarm-store redis`, on STRESS_PORT and STRESS_PORT+1, and one mixed run over
# both (`--url` twice, `--spread-alarms`): members join and post on one node and stream on the
# other, alarm PUTs go to the node the stream is not on; threads back to baseline on both.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
PORT=${STRESS_PORT:-18181}
TCP_PORT=${STRESS_TCP_PORT:-$((PORT + 1))}
CLIENTS=${STRESS_CLIENTS:-500}
BIN="${CARGO_TARGET_DIR:-target}/release"

$CARGO build --release --bins
DIR=$(mktemp -d)

if [ "${STRESS_NODES:-1}" = 2 ]; then
    REDIS_PORT=${STRESS_REDIS_PORT:-$((PORT + 3))}
    REDIS=${REDIS_SERVER:-redis-server}
    command -v "$REDIS" >/dev/null || { echo "stress: STRESS_NODES=2 needs redis-server (scripts/test-deps.sh installs it)"; rm -rf "$DIR"; exit 1; }
    AUTH=()
    if [ "${STRESS_AUTH:-0}" = 1 ]; then
        head -c 48 /dev/urandom | base64 > "$DIR/jwt-secret"
        AUTH=(--jwt-secret-file "$DIR/jwt-secret")
        echo "stress: auth on (HS256, tokens minted per client)"
    fi
    PIDS=()
    stop_all() {
        # The nodes first (SIGTERM: they join their threads), then Redis.
        for pid in "${PIDS[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
        done
        PIDS=()
    }
    trap 'stop_all; rm -rf "$DIR"' EXIT
    "$REDIS" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
        --dir "$DIR" --logfile "$DIR/redis.log" </dev/null >/dev/null 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break
        kill -0 "$REDIS_PID" 2>/dev/null || { echo "stress: redis-server did not start (port $REDIS_PORT busy?)"; exit 1; }
        sleep 0.1
    done
    URLS=()
    for k in 0 1; do
        p=$((PORT + k))
        "$BIN/syncast" --listen "127.0.0.1:$p" --db "$DIR/s$k.db" --log-file "$DIR/node$k.log" \
            --redis "redis://127.0.0.1:$REDIS_PORT/0" --alarm-store redis "${AUTH[@]}" &
        PIDS=("$!" "${PIDS[@]}")
        URLS+=(--url "http://127.0.0.1:$p")
    done
    PIDS+=("$REDIS_PID")
    for k in 0 1; do
        p=$((PORT + k))
        for _ in $(seq 100); do
            curl -fsS "http://127.0.0.1:$p/healthz" >/dev/null 2>&1 && break
            sleep 0.1
        done
        curl -fsS "http://127.0.0.1:$p/healthz" >/dev/null || { echo "stress: node $p did not start or is degraded"; exit 1; }
    done
    status=0
    # shellcheck disable=SC2086
    "$BIN/syncast-stress" "${URLS[@]}" --spread-alarms --scenario mixed \
        --clients "$CLIENTS" --messages 11 --interval 1s..3s "${AUTH[@]}" ${STRESS_ARGS:-} || status=$?
    stop_all
    # Streams open and close on one node; a member may join on one and time out on another, so
    # joins and leaves are counted over both.
    joined=0 left=0
    for k in 0 1; do
        log="$DIR/node$k.log"
        opened=$(grep -c 'stream opened' "$log" || true)
        closed=$(grep -c 'stream closed' "$log" || true)
        joined=$((joined + $(grep -c 'chat joined' "$log" || true)))
        left=$((left + $(grep -cE 'chat (left|expired)' "$log" || true)))
        echo "node $((PORT + k)) log     streams opened $opened, closed $closed"
        if [ "$opened" != "$closed" ] || [ "$opened" = 0 ]; then
            echo "stress: node $((PORT + k))'s log does not show one close for every open"
            [ "$status" -ne 0 ] || status=1
        fi
    done
    echo "nodes' logs        chat joined $joined, left $left"
    if [ "$joined" != "$left" ] || [ "$joined" = 0 ]; then
        echo "stress: the nodes' logs do not show one leave for every join"
        [ "$status" -ne 0 ] || status=1
    fi
    exit "$status"
fi

LOG="$DIR/server.log"
AUTH=()
if [ "${STRESS_AUTH:-0}" = 1 ]; then
    head -c 48 /dev/urandom | base64 > "$DIR/jwt-secret"
    AUTH=(--jwt-secret-file "$DIR/jwt-secret")
    echo "stress: auth on (HS256, tokens minted per client)"
fi
"$BIN/syncast" --listen "127.0.0.1:$PORT" --chat-tcp "127.0.0.1:$TCP_PORT" --db "$DIR/s.db" \
    --log-file "$LOG" "${AUTH[@]}" &
SERVER=$!
stop() {
    if kill -0 "$SERVER" 2>/dev/null; then
        kill -TERM "$SERVER"
        wait "$SERVER" || true
    fi
}
trap 'stop; rm -rf "$DIR"' EXIT

for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    kill -0 "$SERVER" 2>/dev/null || { echo "stress: the server did not start (port $PORT busy?)"; exit 1; }
    sleep 0.1
done

status=0
# shellcheck disable=SC2086
"$BIN/syncast-stress" --url "http://127.0.0.1:$PORT" --scenario mixed \
    --clients "$CLIENTS" --messages 11 --interval 1s..3s "${AUTH[@]}" ${STRESS_ARGS:-} || status=$?
# shellcheck disable=SC2086
"$BIN/syncast-stress" --url "http://127.0.0.1:$PORT" --scenario chat --transport mixed \
    --chat-tcp "127.0.0.1:$TCP_PORT" --clients "$CLIENTS" --messages 11 --interval 1s..3s \
    "${AUTH[@]}" ${STRESS_ARGS:-} || status=$?
stop

# As the original's test did: one open and one close line per stream, one leave per join.
opened=$(grep -c 'stream opened' "$LOG" || true)
closed=$(grep -c 'stream closed' "$LOG" || true)
joined=$(grep -c 'chat joined' "$LOG" || true)
tcp_opened=$(grep -c 'chat tcp opened' "$LOG" || true)
tcp_closed=$(grep -c 'chat tcp closed' "$LOG" || true)
left=$(grep -cE 'chat (left|expired)' "$LOG" || true)
echo "server log         streams opened $opened, closed $closed; chat joined $joined, left $left; tcp opened $tcp_opened, closed $tcp_closed"
if [ "$opened" != "$closed" ] || [ "$joined" != "$left" ] || [ "$tcp_opened" != "$tcp_closed" ] \
    || [ "$tcp_opened" = 0 ]; then
    echo "stress: the server's log does not show one close for every open"
    [ "$status" -ne 0 ] || status=1
fi
exit "$status"
