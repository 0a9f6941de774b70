#!/usr/bin/env bash
# Dispatch benchmark: requests per second of a small shell-script endpoint served
# by dynapi with its sandbox (Landlock, rlimits) and with `sandbox: off`, against
# Debian's `webhook` (adnanh/webhook) serving the same script with the same
# concurrency, measured in one run with wrk. Prints the ratios and what the
# sandbox adds to each request.
#
#   bench/dispatch.sh [SECONDS] [CONNECTIONS]
#
# Needs: wrk and webhook (apt-get install wrk webhook), a release build (made here).
set -euo pipefail
secs=${1:-10}
conns=${2:-8}
. "$(dirname "$0")/common.sh"

"$bin" init "$tmp/ws" >/dev/null
cat > "$tmp/ws/scripts/bench.sh" <<'SH'
#!/bin/sh
echo "hello from a script"
SH
chmod +x "$tmp/ws/scripts/bench.sh"
cat > "$tmp/ws/manifests/bench.yaml" <<'YAML'
name: bench
description: Print one line; the benchmark's script.
method: GET
path: /bench
script: scripts/bench.sh
YAML
git -C "$tmp/ws" add -A
git -C "$tmp/ws" -c user.name=bench -c user.email=bench@localhost commit -qm "Add the bench endpoint"

# The same repository with the sandbox off, for a second daemon.
cp -r "$tmp/ws" "$tmp/ws-off"
printf '\nsandbox: off\n' >> "$tmp/ws-off/dynapi.yaml"
git -C "$tmp/ws-off" -c user.name=bench -c user.email=bench@localhost commit -qam "Sandbox off"

cat > "$tmp/hooks.json" <<JSON
[{"id": "bench", "execute-command": "$tmp/ws/scripts/bench.sh",
  "command-working-directory": "$tmp/ws", "include-command-output-in-response": true}]
JSON

dport=$(free_port); oport=$(free_port); wport=$(free_port)
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws" --listen "127.0.0.1:$dport" --max-scripts 64 >/dev/null 2>&1 &
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws-off" --listen "127.0.0.1:$oport" --max-scripts 64 >/dev/null 2>&1 &
webhook -hooks "$tmp/hooks.json" -ip 127.0.0.1 -port "$wport" >/dev/null 2>&1 &
wait_for "http://127.0.0.1:$dport/healthz"
wait_for "http://127.0.0.1:$oport/healthz"
wait_for "http://127.0.0.1:$wport/hooks/bench"
curl -fs -H "Authorization: Bearer bench" "http://127.0.0.1:$dport/status" | grep -q '"mode":"auto"'
curl -fs -H "Authorization: Bearer bench" "http://127.0.0.1:$oport/status" | grep -q '"mode":"off"'
curl -fs -H "Authorization: Bearer bench" "http://127.0.0.1:$dport/bench" | grep -q "hello from a script"
curl -fs "http://127.0.0.1:$wport/hooks/bench" | grep -q "hello from a script"

# A figure counts only answers that succeeded: a run refused (a 502 is
# quicker than a script) would inflate it.
rps() {
  local out; out=$(wrk -t2 -c"$conns" -d"${secs}s" "$@")
  if grep -q "Non-2xx" <<<"$out"; then echo "answers that are not 2xx: $out" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
echo "wrk: ${secs}s, $conns connections, GET, script: scripts/bench.sh"
d=$(rps -H "Authorization: Bearer bench" "http://127.0.0.1:$dport/bench")
o=$(rps -H "Authorization: Bearer bench" "http://127.0.0.1:$oport/bench")
w=$(rps "http://127.0.0.1:$wport/hooks/bench")
echo "dynapi, sandbox on : $d requests/s"
echo "dynapi, sandbox off: $o requests/s"
echo "webhook            : $w requests/s"
python3 - "$d" "$o" "$w" "$conns" <<'PY'
import sys
on, off, hook, conns = map(float, sys.argv[1:])
print(f"ratio dynapi/webhook: sandbox on {on / hook:.2f}, sandbox off {off / hook:.2f}")
print(f"sandbox on/off: {on / off:.2f}; added to each request's latency at {conns:.0f} connections: "
      f"{(conns / on - conns / off) * 1000:.2f} ms")
PY
