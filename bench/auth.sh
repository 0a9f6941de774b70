#!/usr/bin/env bash
# Auth benchmark: requests per second of GET /status on one daemon with its own
# token (a hash compared in memory) and with an OAuth access token (looked up by
# hash in the SQLite store), in one run with wrk. Prints the ratio and what the
# lookup adds to each request.
#
#   bench/auth.sh [SECONDS] [CONNECTIONS]
#
# Needs: wrk (apt-get install wrk), a release build (made here).
set -euo pipefail
secs=${1:-10}
conns=${2:-8}
. "$(dirname "$0")/common.sh"

port=$(free_port)
base="http://127.0.0.1:$port"
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
wait_for "$base/healthz"

access=$(sign_in "$base")
curl -fs -H "Authorization: Bearer $access" "$base/status" >/dev/null

rps() { wrk -t2 -c"$conns" -d"${secs}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
echo "wrk: ${secs}s, $conns connections, GET /status"
own=$(rps -H "Authorization: Bearer bench" "$base/status")
oauth=$(rps -H "Authorization: Bearer $access" "$base/status")
echo "the daemon's token : $own requests/s"
echo "OAuth access token : $oauth requests/s"
python3 - "$own" "$oauth" "$conns" <<'PY'
import sys
own, oauth, conns = map(float, sys.argv[1:])
print(f"ratio OAuth/own token: {oauth / own:.2f}; added to each request's latency at "
      f"{conns:.0f} connections: {(conns / oauth - conns / own) * 1000:.3f} ms")
PY
