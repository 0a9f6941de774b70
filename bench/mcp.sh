#!/usr/bin/env bash
# MCP benchmark: what a tool call through /mcp costs against the same operation
# over plain HTTP, on one daemon in one run (wrk, same connections). Two
# operations: readFile (no process: the protocol's own cost shows) and the
# `hello` endpoint (a script runs). MCP both ways clients connect: one session
# of the 2025-11-25 revision (initialize, then tools/call with Mcp-Session-Id),
# and stateless 2026-07-28 requests. Prints each ratio.
#
#   bench/mcp.sh [SECONDS] [CONNECTIONS]
#
# Needs: wrk (apt-get install wrk), a release build (made here).
set -euo pipefail
secs=${1:-10}
conns=${2:-8}
. "$(dirname "$0")/common.sh"

port=$(free_port)
url="http://127.0.0.1:$port"
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws" --listen "127.0.0.1:$port" --max-scripts 64 >/dev/null 2>&1 &
wait_for "$url/healthz"

# One session, shared by every wrk connection (sessions take requests in
# parallel).
accept="application/json, text/event-stream"
session=$(curl -fs -D - -o /dev/null "$url/mcp" -H "Authorization: Bearer bench" \
  -H "Content-Type: application/json" -H "Accept: $accept" \
  -d '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}' |
  tr -d '\r' | awk -F': ' 'tolower($1) == "mcp-session-id" {print $2}')
[ -n "$session" ] || { echo "no MCP session" >&2; exit 1; }
curl -fs -o /dev/null "$url/mcp" -H "Authorization: Bearer bench" -H "Mcp-Session-Id: $session" \
  -H "Mcp-Protocol-Version: 2025-11-25" -H "Content-Type: application/json" -H "Accept: $accept" \
  -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'

# A wrk script: METHOD PATH with BODY and the headers given after it. The
# JSON-RPC id is made unique per request (a session answers by id).
lua() {
  local file="$tmp/$1.lua" method=$2 body=$3; shift 3
  {
    echo 'local n = 0'
    echo 'local prefix = tostring(math.random(1, 1e9))'
    echo "local headers = {[\"Authorization\"] = \"Bearer bench\", [\"Content-Type\"] = \"application/json\", [\"Accept\"] = \"$accept\"}"
    for h in "$@"; do echo "headers[\"${h%%:*}\"] = \"${h#*: }\""; done
    echo 'function request()'
    echo '  n = n + 1'
    printf '  local body = [[%s]]\n' "$body"
    echo '  body = body:gsub("\"id\":1,", "\"id\":\"" .. prefix .. "-" .. n .. "\",", 1)'
    echo "  return wrk.format(\"$method\", nil, headers, body)"
    echo 'end'
  } > "$file"
  echo "$file"
}
# tools/call NAME with ARGS; `stateless` adds the 2026-07-28 request metadata.
call() {
  local meta=""
  [ "${3:-}" = stateless ] && meta=',"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}'
  printf '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"%s","arguments":%s%s}}' "$1" "$2" "$meta"
}
session_headers=("Mcp-Session-Id: $session" "Mcp-Protocol-Version: 2025-11-25")
stateless_headers() { echo "Mcp-Protocol-Version: 2026-07-28"; echo "Mcp-Method: tools/call"; echo "Mcp-Name: $1"; }
mcp() { curl -fs "$url/mcp" -H "Authorization: Bearer bench" -H "Content-Type: application/json" -H "Accept: $accept" "$@"; }

# Each MCP answer must be the tool's result, not an error.
for check in "readFile|{\"path\":\"manifests/hello.yaml\"}|\"binary\":false" "hello|{\"name\":\"bench\"}|Hello, bench!"; do
  IFS='|' read -r name args expect <<<"$check"
  mcp -H "${session_headers[0]}" -H "${session_headers[1]}" -d "$(call "$name" "$args")" | grep -q "$expect"
  mapfile -t sh < <(stateless_headers "$name")
  mcp -H "${sh[0]}" -H "${sh[1]}" -H "${sh[2]}" -d "$(call "$name" "$args" stateless)" | grep -q "$expect"
done

rps() {
  local out; out=$(wrk -t2 -c"$conns" -d"${secs}s" "$@")
  if grep -q "Non-2xx" <<<"$out"; then echo "answers that are not 2xx: $out" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
ratio() { python3 -c "print(f'{float(\"$1\")/float(\"$2\"):.2f}')"; }
echo "wrk: ${secs}s, $conns connections; MCP in one 2025-11-25 session, and stateless (2026-07-28)"
for op in "readFile|GET|/files/manifests%2Fhello.yaml||{\"path\":\"manifests/hello.yaml\"}" \
          "hello|POST|/call/hello|{\"name\":\"bench\"}|{\"name\":\"bench\"}"; do
  IFS='|' read -r name method path body args <<<"$op"
  h=$(rps -s "$(lua "http-$name" "$method" "$body")" "$url$path")
  m=$(rps -s "$(lua "mcp-$name" POST "$(call "$name" "$args")" "${session_headers[@]}")" "$url/mcp")
  mapfile -t sh < <(stateless_headers "$name")
  s=$(rps -s "$(lua "mcp2-$name" POST "$(call "$name" "$args" stateless)" "${sh[@]}")" "$url/mcp")
  echo "$name: HTTP $h/s; MCP session $m/s (ratio $(ratio "$m" "$h")); MCP stateless $s/s (ratio $(ratio "$s" "$h"))"
done
