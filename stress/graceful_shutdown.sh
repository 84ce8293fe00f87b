#!/usr/bin/env bash
# Graceful shutdown under load: SIGTERM while hundreds of connections are busy.
#
#   bash stress/graceful_shutdown.sh                 # both scenarios, epoll (~1 minute)
#   bash stress/graceful_shutdown.sh --transport sockets
#
# Scenario A, "in-flight requests complete" (shutdown timeout 15 s): wrk keeps 200 keep-alive connections busy
# with GET /plaintext, 100 raw echo connections stay open, and 200 requests GET /slow?ms=3000 are in flight, each
# on its own connection, when the server gets SIGTERM. Checks:
#   - every /slow request completes with 200 "slept 3000 ms";
#   - new connections are refused from 0.2 s after SIGTERM on (HTTP and echo port);
#   - the process exits with code 0 within the shutdown timeout (+1 s), and its log has no
#     "failed to close gracefully" (Kestrel) and no "did not complete" (the sample's /slow abort log).
# Scenario B, "a request that did not complete is reported" (shutdown timeout 3 s): 50 requests GET /slow?ms=20000
# in flight at SIGTERM. Checks: the process exits within 3 s + 2 s; every client sees its connection end (reset or
# EOF, not a hang); the log reports them: Kestrel's "Some connections failed to close gracefully" (Debug level,
# category Microsoft.AspNetCore.Server.Kestrel.Connections, turned on for these runs) and the sample's
# "did not complete" warning, one per request.
# Exit code 1 if any check fails. Needs wrk (apt-get install -y wrk).
set -euo pipefail

TRANSPORT=epoll
while [ $# -gt 0 ]; do
  case "$1" in
    --transport) TRANSPORT="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "graceful_shutdown.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
HERE="$(cd "$(dirname "$0")" && pwd)"
LIB="$HERE/stresslib.py"
command -v wrk >/dev/null || { echo "graceful_shutdown.sh: wrk is missing (apt-get install -y wrk)" >&2; exit 2; }
DLL="$(python3 "$LIB" build | tail -1)"
WORK="$HERE/.bin/graceful"
mkdir -p "$WORK"
SERVER_PID=""
PIDS=()
FAILED=()

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then kill -KILL "$SERVER_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

start_server() { # $1: log file, $2: shutdown timeout (s), then extra args
  local log="$1" timeout="$2"; shift 2
  dotnet "$DLL" --urls http://127.0.0.1:0 --EchoPort 0 --ChatPort 0 --Transport "$TRANSPORT" \
    --shutdownTimeoutSeconds "$timeout" \
    --Logging:LogLevel:Microsoft.AspNetCore.Server.Kestrel=Debug \
    --Logging:LogLevel:Microsoft.AspNetCore.Server.Kestrel.Connections=Debug \
    --Logging:LogLevel:Microsoft.AspNetCore.Server.Kestrel.BadRequests=Warning \
    --Logging:LogLevel:Microsoft.AspNetCore.Server.Kestrel.Http2=Warning \
    "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 300); do
    grep -q "WebApp: transport=" "$log" && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:"; cat "$log"; exit 1; }
    sleep 0.1
  done
  local line
  line="$(grep -m1 "WebApp: transport=" "$log")" || { echo "server did not start"; exit 1; }
  HTTP_PORT="$(sed -E 's/.* http=http:\/\/[^ ]*:([0-9]+).*/\1/' <<<"$line")"
  ECHO_PORT="$(sed -E 's/.* echo=tcp:\/\/.*:([0-9]+) .*/\1/' <<<"$line")"
  echo "  $line (pid $SERVER_PID, shutdown timeout $timeout s)"
}

check() { # $1: 0 = pass, $2: text
  if [ "$1" = 0 ]; then echo "  [PASS] $2"; else echo "  [FAIL] $2"; FAILED+=("$2"); fi
}

log_check() { # $1: server log; every fail:/crit: entry and crash report fails (stresslib.py log-check)
  local out rc=0
  out="$(python3 "$LIB" log-check "$1" 2>&1)" || rc=$?
  check "$rc" "no fail/crit entry and no crash report in the log: $out"
}

# The client side of one scenario, in Python: opens the slow requests and the idle echo connections, tells bash when
# they are in flight (file "ready"), waits for the file "sigterm" (written right after the kill), probes that new
# connections are refused, then collects the slow responses. Prints a JSON summary.
CLIENT="$WORK/client.py"
cat >"$CLIENT" <<'EOF'
import json, os, socket, sys, threading, time
http_port, echo_port, n_slow, slow_ms, n_echo, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
results = {"ok": 0, "bad": [], "ended": 0, "hung": 0}
lock = threading.Lock()
echo = []
for i in range(n_echo):
    s = socket.create_connection(("127.0.0.1", echo_port), timeout=5)
    s.sendall(b"hi"); assert s.recv(2) == b"hi"
    echo.append(s)
socks = []
for i in range(n_slow):
    s = socket.create_connection(("127.0.0.1", http_port), timeout=5)
    s.sendall(f"GET /slow?ms={slow_ms} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    socks.append(s)
def collect(s):
    s.settimeout(slow_ms / 1000 + 30)
    data = b""
    try:
        while b"slept" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        with lock:
            if data.startswith(b"HTTP/1.1 200") and f"slept {slow_ms} ms".encode() in data:
                results["ok"] += 1
            elif not data:
                results["ended"] += 1
            else:
                results["bad"].append(data[:80].decode(errors="replace"))
    except socket.timeout:
        with lock: results["hung"] += 1
    except OSError:
        with lock: results["ended"] += 1
threads = [threading.Thread(target=collect, args=(s,)) for s in socks]
for t in threads: t.start()
time.sleep(0.5)  # the requests are in the server now
open(os.path.join(work, "ready"), "w").close()
deadline = time.monotonic() + 10
while not os.path.exists(os.path.join(work, "sigterm")) and time.monotonic() < deadline:
    time.sleep(0.01)
t_sig = time.monotonic()
time.sleep(0.2)
refused = {"http": 0, "echo": 0, "accepted": 0, "probes": 0}
while time.monotonic() - t_sig < 2.0:
    for name, port in (("http", http_port), ("echo", echo_port)):
        refused["probes"] += 1
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=1)
            # The kernel completed a handshake: did the server take it? A served connection answers.
            c.settimeout(0.5)
            try:
                if name == "http":
                    c.sendall(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
                    got = c.recv(100)
                else:
                    c.sendall(b"x"); got = c.recv(1)
                if got:
                    refused["accepted"] += 1
                else:
                    refused[name] += 1
            except OSError:
                refused[name] += 1
            c.close()
        except OSError:
            refused[name] += 1
    time.sleep(0.1)
for t in threads: t.join(slow_ms / 1000 + 40)
for s in socks + echo: s.close()
results.update(refused)
print(json.dumps(results))
EOF

scenario() { # $1 name, $2 shutdown timeout, $3 slow requests, $4 slow ms, $5 echo conns, $6 wrk conns
  local name="$1" timeout="$2" n_slow="$3" slow_ms="$4" n_echo="$5" wrk_conns="$6"
  local log="$WORK/$name.log"
  rm -f "$WORK/ready" "$WORK/sigterm"
  echo "scenario $name: $n_slow x GET /slow?ms=$slow_ms in flight, $n_echo echo connections, wrk $wrk_conns connections"
  start_server "$log" "$timeout"
  if [ "$wrk_conns" -gt 0 ]; then
    wrk -t1 -c"$wrk_conns" -d6s --timeout 5s "http://127.0.0.1:$HTTP_PORT/plaintext" >"$WORK/$name-wrk.txt" 2>&1 & PIDS+=($!)
  fi
  python3 "$CLIENT" "$HTTP_PORT" "$ECHO_PORT" "$n_slow" "$slow_ms" "$n_echo" "$WORK" >"$WORK/$name-client.json" & local client=$!
  PIDS+=($client)
  for _ in $(seq 300); do [ -f "$WORK/ready" ] && break; sleep 0.05; done
  local busy
  busy="$(python3 "$LIB" figures "$SERVER_PID" "http://127.0.0.1:$HTTP_PORT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["active"])')"
  echo "  connections open at SIGTERM: $busy (epoll.connections.active; empty on sockets)"
  local t0 t1
  t0=$(date +%s.%N)
  kill -TERM "$SERVER_PID"
  touch "$WORK/sigterm"
  local code=0
  # Wait for the exit, bounded: the shutdown timeout plus 10 s.
  for _ in $(seq $(( (timeout + 10) * 20 ))); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    t1=$(date +%s.%N); kill -KILL "$SERVER_PID"; code=137
  else
    wait "$SERVER_PID" || code=$?
    t1=$(date +%s.%N)
  fi
  SERVER_PID=""
  local exit_s
  exit_s=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
  wait "$client" || true
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  echo "  exit code $code, $exit_s s after SIGTERM"
  echo "  client: $(cat "$WORK/$name-client.json")"
  RESULT="$(cat "$WORK/$name-client.json")"
  EXIT_S="$exit_s"; EXIT_CODE="$code"; LOG="$log"
}

jq_() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, d))" "$RESULT" "$1"; }

scenario A 15 200 3000 100 200
check "$([ "$(jq_ 'ok')" = 200 ]; echo $?)" "all 200 in-flight /slow requests completed with 200 (ok=$(jq_ 'ok'), ended=$(jq_ 'ended'), hung=$(jq_ 'hung'), bad=$(jq_ 'len(bad)'))"
check "$([ "$(jq_ 'accepted')" = 0 ]; echo $?)" "no new connection served after SIGTERM ($(jq_ 'http') HTTP and $(jq_ 'echo') echo probes refused, $(jq_ 'accepted') served)"
check "$([ "$EXIT_CODE" = 0 ] && python3 -c "import sys; sys.exit(0 if $EXIT_S <= 16 else 1)"; echo $?)" "exited with code 0 within the shutdown timeout ($EXIT_S s <= 15 s + 1 s)"
GRACE="$(grep -c "failed to close gracefully\|did not complete" "$LOG" || true)"
check "$([ "$GRACE" = 0 ]; echo $?)" "log reports no connection or request left unfinished ($GRACE lines)"
log_check "$LOG"
echo "  wrk: $(grep -E 'requests in|Socket errors' "$WORK/A-wrk.txt" | tr -s ' ' | tr '\n' ' ')"

scenario B 3 50 20000 0 0
check "$([ "$(jq_ 'hung')" = 0 ] && [ "$(jq_ 'ok')" = 0 ]; echo $?)" "every unfinished request's connection ended, none hung (ended=$(jq_ 'ended'), hung=$(jq_ 'hung'), ok=$(jq_ 'ok'))"
check "$(python3 -c "import sys; sys.exit(0 if $EXIT_S <= 5 else 1)"; echo $?)" "exited within the shutdown timeout + 2 s ($EXIT_S s <= 5 s; exit code $EXIT_CODE)"
KESTREL="$(grep -c "Some connections failed to close gracefully" "$LOG" || true)"
SLOW="$(grep -c "did not complete" "$LOG" || true)"
check "$([ "$KESTREL" -ge 1 ]; echo $?)" "Kestrel reported it: 'Some connections failed to close gracefully' ($KESTREL)"
check "$([ "$SLOW" = 50 ]; echo $?)" "the sample reported each unfinished request: $SLOW 'did not complete' warnings of 50"
echo "  log: $KESTREL x 'Some connections failed to close gracefully during server shutdown.', $SLOW x 'GET /slow?ms=20000 did not complete: aborted after ...'"
log_check "$LOG"

echo
if [ ${#FAILED[@]} -eq 0 ]; then echo "graceful_shutdown: PASS"; else echo "graceful_shutdown: FAIL (${#FAILED[@]}): ${FAILED[*]}"; exit 1; fi
