#!/usr/bin/env bash
# Dispatch benchmark: requests per second of a small shell-script endpoint served
# by dynapi, against Debian's `webhook` (adnanh/webhook) serving the same script
# with the same concurrency, measured in one run with wrk. Prints the ratio.
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

cat > "$tmp/hooks.json" <<JSON
[{"id": "bench", "execute-command": "$tmp/ws/scripts/bench.sh",
  "command-working-directory": "$tmp/ws", "include-command-output-in-response": true}]
JSON

dport=$(free_port); wport=$(free_port)
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws" --listen "127.0.0.1:$dport" --max-scripts 64 >/dev/null 2>&1 &
webhook -hooks "$tmp/hooks.json" -ip 127.0.0.1 -port "$wport" >/dev/null 2>&1 &
wait_for "http://127.0.0.1:$dport/healthz"
wait_for "http://127.0.0.1:$wport/hooks/bench"
curl -fs -H "Authorization: Bearer bench" "http://127.0.0.1:$dport/bench" | grep -q "hello from a script"
curl -fs "http://127.0.0.1:$wport/hooks/bench" | grep -q "hello from a script"

rps() { wrk -t2 -c"$conns" -d"${secs}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
echo "wrk: ${secs}s, $conns connections, GET, script: scripts/bench.sh"
d=$(rps -H "Authorization: Bearer bench" "http://127.0.0.1:$dport/bench")
w=$(rps "http://127.0.0.1:$wport/hooks/bench")
echo "dynapi : $d requests/s"
echo "webhook: $w requests/s"
python3 -c "print(f'ratio dynapi/webhook: {float(\"$d\")/float(\"$w\"):.2f}')"
