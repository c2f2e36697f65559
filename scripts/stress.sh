#!/usr/bin/env bash
# `make stress`: a release server on a temporary port and store, the Go original's scenario
# (500 chat members x 11 messages at 1-3 s) together with 500 alarm streams, then the summary;
# then the same chat scenario in a mixed room: half the members on the chat's plain TCP port
# (--chat-tcp, the original's own transport), half over SSE. Members per run: STRESS_CLIENTS (500).
# Exit status: the tool's (0 only on PASS), or 1 if the server's log does not show one close
# for every open. Extra tool flags: STRESS_ARGS="--json"; port: STRESS_PORT (default 18181).
# STRESS_AUTH=1: the server runs with auth on (an HS256 secret made here) and the tool mints a
# short-lived token for each of its clients' requests and streams.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
PORT=${STRESS_PORT:-18181}
TCP_PORT=${STRESS_TCP_PORT:-$((PORT + 1))}
CLIENTS=${STRESS_CLIENTS:-500}
BIN="${CARGO_TARGET_DIR:-target}/release"

$CARGO build --release --bins
DIR=$(mktemp -d)
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
