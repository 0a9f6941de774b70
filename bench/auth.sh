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
cb="http://127.0.0.1:9/cb"
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
wait_for "$base/healthz"

# Sign in as an MCP client does: register, the owner approves, redeem the code.
json() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
client=$(curl -fs "$base/oauth/register" -H 'content-type: application/json' \
  -d "{\"redirect_uris\": [\"$cb\"], \"token_endpoint_auth_method\": \"none\"}" | json client_id)
verifier=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
challenge=$(python3 -c 'import base64, hashlib, sys; print(base64.urlsafe_b64encode(hashlib.sha256(sys.argv[1].encode()).digest()).rstrip(b"=").decode())' "$verifier")
back=$(curl -fs -o /dev/null -w '%{redirect_url}' "$base/oauth/authorize" \
  --data-urlencode response_type=code --data-urlencode client_id="$client" \
  --data-urlencode redirect_uri="$cb" --data-urlencode code_challenge="$challenge" \
  --data-urlencode code_challenge_method=S256 --data-urlencode owner_token=bench \
  --data-urlencode grant=read --data-urlencode decision=approve)
code=$(python3 -c 'import sys, urllib.parse as u; print(dict(u.parse_qsl(u.urlsplit(sys.argv[1]).query))["code"])' "$back")
access=$(curl -fs "$base/oauth/token" --data-urlencode grant_type=authorization_code \
  --data-urlencode code="$code" --data-urlencode redirect_uri="$cb" \
  --data-urlencode client_id="$client" --data-urlencode code_verifier="$verifier" | json access_token)
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
