#!/usr/bin/env bash
# Dispatch benchmark: requests per second of a small shell-script endpoint served
# by dynapi with its sandbox (Landlock, seccomp, rlimits) and with `sandbox:
# off`, against Debian's `webhook` (adnanh/webhook) serving the same script with
# the same concurrency, measured in one run with wrk (two rounds, the second in
# reverse order). Also measured in the same run: the floor, a C program
# (bench/spawn_floor.c) that only starts the script and reads its output from as
# many threads, no HTTP, no sandbox: what the machine can do at all. Prints the
# ratios and what the sandbox adds to each request.
#
#   bench/dispatch.sh [SECONDS] [CONNECTIONS]
#
# Needs: wrk and webhook (apt-get install wrk webhook), cc (which cargo
# needs anyway), a release build (made here).
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
on() { rps -H "Authorization: Bearer bench" "http://127.0.0.1:$dport/bench"; }
off() { rps -H "Authorization: Bearer bench" "http://127.0.0.1:$oport/bench"; }
hook() { rps "http://127.0.0.1:$wport/hooks/bench"; }
mean() { python3 -c 'import sys; print(f"{(float(sys.argv[1]) + float(sys.argv[2])) / 2:.2f}")' "$1" "$2"; }
cc -O2 -pthread -o "$tmp/spawn_floor" "$here/bench/spawn_floor.c"
floor() { "$tmp/spawn_floor" "$tmp/ws/scripts/bench.sh" "$conns" "$secs"; }
# Two rounds, the second in the reverse order, each figure the mean of its
# two: a machine that drifts during the run (a neighbour on the host) then
# weighs on every side alike.
echo "wrk: ${secs}s per round, 2 rounds, $conns connections, GET, script: scripts/bench.sh"
d1=$(on); o1=$(off); w1=$(hook); f1=$(floor)
f2=$(floor); w2=$(hook); o2=$(off); d2=$(on)
d=$(mean "$d1" "$d2"); o=$(mean "$o1" "$o2"); w=$(mean "$w1" "$w2"); f=$(mean "$f1" "$f2")
echo "dynapi, sandbox on : $d requests/s"
echo "dynapi, sandbox off: $o requests/s"
echo "webhook            : $w requests/s"
echo "floor (spawn only) : $f runs/s"
python3 - "$d" "$o" "$w" "$f" "$conns" <<'PY'
import sys
on, off, hook, floor, conns = map(float, sys.argv[1:])
print(f"ratio dynapi/webhook: sandbox on {on / hook:.2f}, sandbox off {off / hook:.2f}")
print(f"ratio to the floor: sandbox on {on / floor:.2f}, sandbox off {off / floor:.2f}, "
      f"webhook {hook / floor:.2f} (a dispatcher that cost nothing would reach "
      f"{floor / hook:.2f}x webhook)")
print(f"sandbox on/off: {on / off:.2f}; added to each request's latency at {conns:.0f} connections: "
      f"{(conns / on - conns / off) * 1000:.2f} ms")
PY
